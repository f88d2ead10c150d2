#!/bin/bash
# Submits the whole chain, each step after the one before succeeded (--dependency=afterok):
# extraction array -> merge -> table array -> assemble. Prints each job id as it is submitted,
# then where the logs ($WORK/logs) and the table ($WORK/table) will be.
#
#   WORK=/shared/me/food DATA_ARGS="--dataset manifest --root /shared/me/photos.jsonl" \
#     TABLE_ARGS="--leave-one-out --seeds 5" MARNET=/shared/me/bin/marnet deploy/slurm/submit.sh --wait
#
# Environment: as the .sbatch files (WORK and DATA_ARGS required; TABLE, TABLE_ARGS, MARNET:
# a path the compute nodes see too, default marnet on PATH), and SHARDS (extraction tasks,
# default 4), TASKS (table tasks, default 4), SBATCH_ARGS (added to every sbatch call, e.g.
# "--partition=cpu --account=lab"). All are checked before the first sbatch.
# --wait: follows the jobs until all have ended; exits 0 only if every one COMPLETED, else names
# the failed and cancelled ones with their logs and exits 1 (Ctrl-C stops the following, not the
# jobs). A failed job's dependents are cancelled: by Slurm where the site sets
# DependencyParameters=kill_invalid_depend, else by --wait; without --wait they stay pending
# (DependencyNeverSatisfied): scancel them. Fix the cause and run this again: finished shards,
# runs and the merged cache are reused.
set -euo pipefail
die() { echo "submit.sh: $*" >&2; exit 2; }
wait=
case "$*" in "") ;; --wait) wait=1 ;; *) die "usage: [VAR=value ...] submit.sh [--wait] (variables: see the top of this file)" ;; esac
: "${WORK:?set WORK to a folder on the shared filesystem}"
: "${DATA_ARGS:?set DATA_ARGS to what to extract, e.g. DATA_ARGS=\"--dataset manifest --root /shared/me/photos.jsonl\"}"
export SHARDS=${SHARDS:-4} TASKS=${TASKS:-4}
for v in SHARDS TASKS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a whole number >= 1, not '${!v}'"
done
# The jobs get this submitting shell's environment: make MARNET and WORK absolute paths, so
# that they do not depend on PATH or the folder on the compute nodes.
m=$(command -v "${MARNET:-marnet}") ||
  die "no marnet binary '${MARNET:-marnet}': set MARNET=/path/to/marnet (a path the compute nodes see too) or put marnet on PATH"
[[ $m == /* ]] || m=$PWD/$m
export MARNET=$m
mkdir -p "$WORK/logs" "$WORK/shards"
WORK=$(cd "$WORK" && pwd)
export WORK
here=$(cd "$(dirname "$0")" && pwd)

names=() ids=() last=
# submit NAME SBATCH-ARGS...: one step, after the step before. If sbatch fails, cancels the
# steps already submitted (they would only wait for the missing one).
submit() {
  local name=$1 id
  shift
  # shellcheck disable=SC2086
  if ! id=$(sbatch --parsable ${SBATCH_ARGS:-} ${last:+--dependency=afterok:$last} "$@"); then
    if [ -n "$last" ]; then
      scancel "${ids[@]}" || true
      echo "submit.sh: sbatch failed for $name; cancelled the jobs submitted before it: ${ids[*]}" >&2
    fi
    exit 1
  fi
  last=${id%%;*}
  names+=("$name") ids+=("$last")
  echo "submitted $name: job $last"
}
submit extract --array=0-$((SHARDS - 1)) --output="$WORK/logs/%x-%A_%a.out" "$here/extract.sbatch"
submit merge --output="$WORK/logs/%x-%j.out" "$here/merge.sbatch"
submit table --array=0-$((TASKS - 1)) --output="$WORK/logs/%x-%A_%a.out" "$here/table.sbatch"
submit assemble --output="$WORK/logs/%x-%j.out" "$here/assemble.sbatch"
[ "${TABLE:-ablate}" = compare ] && table=$WORK/table/comparison.md || table=$WORK/table/ablation.md
echo "logs: $WORK/logs/; the table will be $table"
[ -n "$wait" ] || exit 0

# --wait polls rather than `sbatch --wait` on the last job: that returns 0 when the job was
# cancelled, and never returns when a failed job's dependents stay pending.
# states ID: "STATE REASON LOG" per job or array task. scontrol keeps an ended job for
# MinJobAge (300 s by default, far longer than a poll); sacct, where the site has accounting,
# is the fallback.
states() {
  local out
  out=$(scontrol show job -o "$1" 2>/dev/null | awk '{
    s = r = o = "?"
    for (i = 1; i <= NF; i++) {
      k = substr($i, 1, index($i, "=") - 1); v = substr($i, index($i, "=") + 1)
      if (k == "JobState") s = v; else if (k == "Reason") r = v; else if (k == "StdOut") o = v
    }
    if (s == "PENDING" && r == "DependencyNeverSatisfied") s = "NEVER_RUNS"  # failed, not busy
    print s, r, o }') || true
  [ -n "$out" ] || out=$(sacct -n -X -P -j "$1" -o State 2>/dev/null | awk '{ print $1, "?", "?" }') || true
  echo "${out:-UNKNOWN ? ?}"
}
active='^(PENDING|RUNNING|CONFIGURING|COMPLETING|SUSPENDED|REQUEUE[A-Z_]*|RESIZING|SIGNALING|STAGE_OUT) '
failed=
while :; do
  busy=
  for i in "${!ids[@]}"; do
    st=$(states "${ids[$i]}")
    grep -Eq "$active" <<<"$st" && busy=1
    if [ -z "$failed" ] && grep -Evq "$active|^COMPLETED " <<<"$st"; then
      failed=$i waiting=()
      for id in "${ids[@]:i+1}"; do grep -Eq "$active|^NEVER_RUNS " <<<"$(states "$id")" && waiting+=("$id"); done
      if [ ${#waiting[@]} -gt 0 ]; then
        echo "submit.sh: ${names[$i]} (job ${ids[$i]}) failed; cancelling the jobs waiting for it: ${waiting[*]}" >&2
        scancel "${waiting[@]}" || true
        busy=1
      fi
    fi
  done
  [ -n "$busy" ] || break
  sleep 5
done

[ -z "$failed" ] && { echo "done: every job COMPLETED; the table is $table"; exit 0; }
echo "submit.sh: the chain did not complete:" >&2
for i in "${!ids[@]}"; do
  st=$(states "${ids[$i]}")
  summary=$(awk '{ print $1 }' <<<"$st" | sort | uniq -c | awk '{ printf "%s%s", sep, $2 ($1 > 1 ? " x" $1 : ""); sep = ", " }')
  echo "  ${names[$i]} (job ${ids[$i]}): $summary" >&2
  while read -r log; do
    if [ -e "$log" ]; then echo "    log: $log" >&2; fi
  done < <(awk '$1 != "COMPLETED" { print $3 }' <<<"$st")
done
echo "submit.sh: fix the cause and run submit.sh again (finished shards and runs are reused)" >&2
exit 1
