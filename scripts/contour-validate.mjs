// Validates HTTPProxy objects against Contour's published schema (the validators of the npm
// package @kubernetes-models/contour, generated from Contour's CRDs). Reads a JSON array of
// objects on standard input; prints one line per invalid object and exits 1 if any is.
// Usage: node scripts/contour-validate.mjs <package dir> < objects.json
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

const dir = process.argv[2];
const { HTTPProxy } = await import(pathToFileURL(path.join(dir, "projectcontour.io/v1/HTTPProxy.js")).href);
const objects = JSON.parse(readFileSync(0, "utf8"));
let invalid = 0;
for (const [i, object] of objects.entries()) {
  try {
    new HTTPProxy(object).validate();
  } catch (e) {
    invalid++;
    console.log(`object ${i} (${object?.metadata?.namespace}/${object?.metadata?.name}): ${e.message}`);
  }
}
console.log(`${objects.length - invalid} valid, ${invalid} invalid`);
process.exit(invalid ? 1 : 0);
