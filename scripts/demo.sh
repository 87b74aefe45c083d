#!/usr/bin/env bash
# The main job on sample_logs/: a fresh home, validate, log, tail, compact, report.
set -euo pipefail
cd "$(dirname "$0")/.."
TALLY=${TALLY:-.venv/bin/tally}
export TALLY_HOME=${TALLY_HOME:-.tally-demo}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "fresh home in $TALLY_HOME"
rm -rf "$TALLY_HOME"
$TALLY init
cp -R sample_logs/. "$TALLY_HOME/logs/"
rm -f "$TALLY_HOME/logs/README.md"

step "validate the sample logs, then the file of bad lines (expected to fail)"
find sample_logs -name '*.jsonl' -not -path '*/invalid/*' -print0 | sort -z \
    | xargs -0 $TALLY validate --max-errors 0
$TALLY validate sample_logs/invalid/bad_lines.jsonl || true

step "log one event from the shell (the yolo plan's example)"
$TALLY log agent_token_usage --phase 1 role=dev input_tokens=5000 output_tokens=1200 \
    cache_read=3000 cache_write=800 --model claude-sonnet-4-5

step "tail: validate and stage every line, quarantine the bad ones"
$TALLY tail --once
$TALLY status | tail -n 3

step "compact: stage -> Delta Lake"
$TALLY compact

step "report: tokens and cost per agent role and phase"
$TALLY report --by role,phase
step "report: per agent per day"
$TALLY report --by agent,day --since 2025-08-27
step "the seed's daily summary for 2025-08-29"
$TALLY report daily-summary --date 2025-08-29 --agent claude,gemini,codex --format json
step "tasks still in progress"
$TALLY progress --status in_progress
step "usage today, this week, all time (the sample is from 2025-08, so today is empty)"
$TALLY usage
step "budgets: the seed's 150,000 tokens and \$10 a day, 1,000,000 tokens a week"
$TALLY budget
$TALLY budget --since 2025-08-29 --format json | .venv/bin/python -c \
  "import json, sys; print('2025-08-29:', [(r['scope'], r['metric'], r['percentage'], r['status']) for r in json.load(sys.stdin) if r['period_start'] == '2025-08-29'])"

step "the same report as a page for mail or CI, and as a picture"
$TALLY report --by agent,day --since 2025-08-23 --format html -o "$TALLY_HOME/report.html" \
    --chart "$TALLY_HOME/report.png"
echo "wrote $TALLY_HOME/report.html and $TALLY_HOME/report.png"
echo "The dashboard: .venv/bin/tally serve --home $TALLY_HOME, then open http://127.0.0.1:8787/#/overview?date=2025-08-29"

step "the lake"
echo "Delta tables under $TALLY_HOME/lake/ (one per event type, partitioned by date=YYYY-MM-DD)."
echo "Query them, for example:"
echo "  .venv/bin/python -c \"import polars as pl; print(pl.scan_delta('$TALLY_HOME/lake/agent_token_usage').group_by('agent').agg(pl.col('output_tokens').sum()).collect())\""
echo "  duckdb -c \"SELECT agent, sum(output_tokens) FROM delta_scan('$TALLY_HOME/lake/agent_token_usage') GROUP BY 1\""
