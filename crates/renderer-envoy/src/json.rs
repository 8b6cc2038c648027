//! Typed Envoy messages in Envoy's proto3 JSON form (and YAML), `Any` fields included,
//! through prost-reflect and the descriptor set envoy-types was generated from.

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use std::sync::OnceLock;

static DESCRIPTORS: &[u8] = include_bytes!("../descriptors/envoy-types-0.7.7.bin");

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).expect("the vendored descriptor set decodes"))
}

/// The proto3 JSON mapping of a message (field names as in the .proto files, defaults left
/// out, enums by name, `Any` with its `@type`).
pub fn to_json<M: Message + Name>(message: &M) -> serde_json::Value {
    let descriptor = pool()
        .get_message_by_name(&M::full_name())
        .unwrap_or_else(|| panic!("{} is in the descriptor set", M::full_name()));
    let dynamic =
        DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).expect("a message decodes as itself");
    let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(true);
    dynamic.serialize_with_options(serde_json::value::Serializer, &options).expect("JSON serialization cannot fail")
}

/// The same, as YAML (what `envoy -c` reads).
pub fn to_yaml<M: Message + Name>(message: &M) -> String {
    serde_yaml::to_string(&to_json(message)).expect("YAML serialization cannot fail")
}
