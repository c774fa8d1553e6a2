#!/usr/bin/env bash
# The whole test suite once per FUSE transport, both at once: the native one with its output as
# it comes, fuse-native into a file shown once the native run is over (every daemon a test starts
# takes SNAPFS_TRANSPORT). Arguments go to tap. With tap's TAP reporter, ends with one summary line
# of tap's own form for both runs together. Exits non-zero if either run failed.
set -uo pipefail

other=$(mktemp)
native=$(mktemp)
trap 'rm -f "$other" "$native"' EXIT

SNAPFS_TRANSPORT=fuse-native npx tap "$@" >"$other" 2>&1 &
other_pid=$!

echo "# transport: native"
SNAPFS_TRANSPORT=native npx tap "$@" 2>&1 | tee "$native"
status=${PIPESTATUS[0]}

wait "$other_pid"
other_status=$?
echo "# transport: fuse-native"
cat "$other"
[ "$other_status" -eq 0 ] || status=$other_status

total=0
pass=0
fail=0
for out in "$native" "$other"; do
  summary=$(grep -E '^# \{ total: [0-9]+' "$out" | tail -n 1)
  for key in total pass fail; do
    pattern="[{,] $key: ([0-9]+)"
    if [[ $summary =~ $pattern ]]; then declare "$key=$((${!key} + BASH_REMATCH[1]))"; fi
  done
done
if [ "$total" -gt 0 ]; then
  if [ "$fail" -gt 0 ]; then echo "# { total: $total, pass: $pass, fail: $fail }"; else echo "# { total: $total, pass: $pass }"; fi
fi
exit "$status"
