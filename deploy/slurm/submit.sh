#!/bin/bash
# Submits the whole chain, each step after the one before succeeded (--dependency=afterok):
# extraction array -> merge -> table array -> assemble. Prints the job ids.
#
#   WORK=/shared/me/food DATA_ARGS="--dataset manifest --root /shared/me/photos.jsonl" \
#     TABLE_ARGS="--leave-one-out --seeds 5" deploy/slurm/submit.sh
#
# Environment: as the .sbatch files (WORK, DATA_ARGS, TABLE, TABLE_ARGS, MARNET), and
# SHARDS (extraction tasks, default 4), TASKS (table tasks, default 4), SBATCH_ARGS (added to
# every sbatch call, e.g. "--partition=cpu --account=lab"). With --wait, returns when the last
# job ends. A failed task cancels what depends on it (if the site sets
# DependencyParameters=kill_invalid_depend; otherwise those stay pending: scancel them); fix
# the cause and run this again: finished shards, runs and the merged cache are reused.
set -euo pipefail
: "${WORK:?set WORK to a folder on the shared filesystem}"
here=$(cd "$(dirname "$0")" && pwd)
wait_flag=()
[[ "${1:-}" == "--wait" ]] && wait_flag=(--wait)
# shellcheck disable=SC2086
submit() { sbatch --parsable ${SBATCH_ARGS:-} "$@" | cut -d';' -f1; }
mkdir -p "$WORK/shards"
extract=$(submit --array=0-$((${SHARDS:-4} - 1)) "$here/extract.sbatch")
merge=$(submit --dependency=afterok:"$extract" "$here/merge.sbatch")
table=$(submit --dependency=afterok:"$merge" --array=0-$((${TASKS:-4} - 1)) "$here/table.sbatch")
echo "submitted: extract $extract, merge $merge, table $table, assemble (next line)"
# (`${a[@]+...}`: an empty array under `set -u` on bash before 4.4.)
submit --dependency=afterok:"$table" ${wait_flag[@]+"${wait_flag[@]}"} "$here/assemble.sbatch"
