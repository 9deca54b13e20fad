#!/usr/bin/env bash
# Set up, write the example NWB files and AIND job files, and run every example job on the embedded
# defaults (local results folder, SQLite record store), posting results; then run them again (nothing
# runs twice), show the records, and say what to do next. Safe to run again: recorded jobs do not rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== Setting up .venv (nothing to do when it is up to date)"
bash scripts/setup.sh runtime
echo "== Writing the example NWB files and their AIND job files into examples/"
.venv/bin/python examples/make_examples.py --out examples
export DRY_RUN="${DRY_RUN:-0}"
case "${DRY_RUN,,}" in
  0 | false | no | off) posting=1 ;;
  *) posting=0 ;;
esac
if [ "$posting" = 1 ]; then
  echo "== Running the example jobs (jobs already recorded are not run again)"
else
  echo "== Running the example jobs as a dry run (DRY_RUN=$DRY_RUN: nothing is posted; jobs already recorded are not run again)"
fi
.venv/bin/analysis-wrapper run --summary examples/jobs
if [ "$posting" = 1 ]; then
  echo "== Running them again: every job is already recorded, so none runs"
  .venv/bin/analysis-wrapper run examples/jobs
fi
echo "== The records (\`analysis-wrapper results\`)"
.venv/bin/analysis-wrapper results
cat <<EOF
== Next steps (from $PWD)
Put the CLIs on your PATH, in each new shell:
    source .venv/bin/activate        # or: export PATH="\$PWD/.venv/bin:\$PATH"
Results: one folder per job, ./analysis_results/<fingerprint>/ (the table and figure of each job)
Records: ./.dagster_home/analysis_records.sqlite; list them with \`analysis-wrapper results\`, the jobs
    with \`analysis-wrapper status\`
Open the Dagster UI on the same instance, then http://127.0.0.1:3000 -> Catalog -> isi_violations_result:
    DAGSTER_HOME=\$PWD/.dagster_home dagster dev -w workspace.yaml
EOF
