//! The service kit: what every Portico service process shares besides the bus contract
//! (`portico-bus`). `cli`: the NATS and admin flags, the runtime, stopping on signals.
//! `admin`: `/healthz`, `/readyz`, `/metrics`. `telemetry`: logs and OpenTelemetry traces,
//! and the conversions between spans and the envelope's trace context. `renderer_inputs`:
//! what the renderers render from (the newest complete model, the trust material).

pub mod admin;
pub mod cli;
pub mod renderer_inputs;
pub mod telemetry;
