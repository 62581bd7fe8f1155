#!/usr/bin/env bash
# Checks of deploy/: Prometheus config and alert rules (promtool), the alert unit tests, the
# Grafana dashboard, the example configs, and the list of metric names the dashboard and the
# alert rules use.
#
#   bash deploy/check.sh                 run every check; fail if deploy/metric-names.txt is stale
#   bash deploy/check.sh --write-names   regenerate deploy/metric-names.txt (then check)
#   bash deploy/check.sh FILE            also write the metric-name list to FILE ("-": stdout)
#
# The metric-name list is every `postern_[a-z_]+` word in the dashboard JSON and in alerts.yml,
# with the histogram suffixes _bucket, _sum and _count stripped, sorted (C locale), one per line.
# A test compares it with what the gateway's and relay's /metrics really export, so prose in
# those two files must name only real metrics.
#
# Needs promtool (Debian: prometheus) and python3. Runs from any directory.
set -euo pipefail
cd "$(dirname "$0")/.."

write_names=0
names_out=""
for arg in "$@"; do
  case "$arg" in
    --write-names) write_names=1 ;;
    -h | --help)
      sed -n '2,16p' "$0"
      exit 0
      ;;
    -) names_out=- ;;
    -*)
      echo "deploy/check.sh: unknown option $arg" >&2
      exit 2
      ;;
    *) names_out="$arg" ;;
  esac
done

dashboard=deploy/grafana/dashboards/postern.json
alerts=deploy/prometheus/alerts.yml
names_file=deploy/metric-names.txt

for tool in promtool python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "deploy/check.sh: $tool not found (Debian: apt-get install prometheus python3)" >&2
    exit 1
  fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

section() { printf -- '--- %s\n' "$*"; }

section "promtool check config"
promtool check config deploy/prometheus/prometheus.yml

section "promtool check rules"
promtool check rules "$alerts"

section "promtool test rules"
promtool test rules deploy/prometheus/alerts_test.yml

section "dashboard JSON"
python3 -m json.tool "$dashboard" >/dev/null
echo "  $dashboard parses"

# Structure that Grafana's provisioning would otherwise only complain about at run time, and
# every panel query turned into a recording rule so that promtool parses it as PromQL.
python3 - "$dashboard" "$tmp/dashboard-rules.json" <<'PY'
import json, re, sys

path, rules_out = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as f:
    dash = json.load(f)

errors = []
def err(msg):
    errors.append(msg)

if dash.get("schemaVersion", 0) < 36:
    err(f"schemaVersion {dash.get('schemaVersion')} is older than 36")
if not dash.get("uid"):
    err("dashboard has no uid")
variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
if "datasource" not in variables:
    err("no $datasource variable")

panels = []
for p in dash.get("panels", []):
    panels.append(p)
    panels.extend(p.get("panels", []))
ids = [p.get("id") for p in panels]
dupes = sorted({i for i in ids if ids.count(i) > 1})
if dupes:
    err(f"duplicate panel ids {dupes}")

# Grafana's own variables become fixed values; dashboard variables a match-all regex.
def substitute(expr):
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    expr = expr.replace("$__range", "1h")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)

rules = []
for p in panels:
    if p.get("type") == "row":
        continue
    title = p.get("title") or f"panel {p.get('id')}"
    if "gridPos" not in p:
        err(f"{title}: no gridPos")
    targets = p.get("targets") or []
    if not targets:
        err(f"{title}: no queries")
    for t in targets:
        ds = t.get("datasource") or p.get("datasource") or {}
        if ds.get("uid") not in ("${datasource}", "$datasource", "prometheus"):
            err(f"{title}: query {t.get('refId')} uses datasource {ds!r}")
        expr = t.get("expr", "")
        if not expr:
            err(f"{title}: query {t.get('refId')} has no expr")
            continue
        rules.append({"record": f"dashboard:panel{p.get('id')}:{t.get('refId')}",
                      "expr": substitute(expr)})
for v in dash.get("templating", {}).get("list", []):
    q = v.get("query")
    if isinstance(q, dict):
        q = q.get("query", "")
    m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q or "")
    if m:
        rules.append({"record": f"dashboard:variable:{v['name']}", "expr": substitute(m.group(1))})

if errors:
    for e in errors:
        print(f"  {path}: {e}", file=sys.stderr)
    sys.exit(1)
with open(rules_out, "w", encoding="utf-8") as f:
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
print(f"  {len(panels)} panels, {len(rules)} queries")
PY
# A JSON document is a YAML document: promtool reads the generated rule file as it is.
if ! promtool check rules "$tmp/dashboard-rules.json" >"$tmp/promql.log" 2>&1; then
  echo "  dashboard queries that are not valid PromQL:" >&2
  cat "$tmp/promql.log" >&2
  exit 1
fi
echo "  every dashboard query parses as PromQL"

section "example configs"
# TOML syntax, and the metrics ports the scrape config expects. What the keys mean is checked
# by the binaries: postern-gateway check-config FILE and postern-relay check-config FILE
# (inside the container for deploy/config/gateway.toml, whose paths are the container's).
python3 - <<'PY'
import re, sys
try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    print("  python3 has no tomllib: TOML syntax not checked")
    sys.exit(0)

with open("deploy/prometheus/prometheus.yml", encoding="utf-8") as f:
    scrape = f.read()
failed = False
for name, service in (("gateway", "gateway"), ("relay", "relay")):
    path = f"deploy/config/{name}.toml"
    with open(path, "rb") as f:
        try:
            cfg = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            print(f"  {path}: {e}", file=sys.stderr)
            failed = True
            continue
    listen = cfg.get("metrics", {}).get("listen", "")
    port = listen.rsplit(":", 1)[-1]
    if not re.search(rf'"{service}:{re.escape(port)}"', scrape):
        print(f"  {path}: [metrics] listen = {listen!r}, but prometheus.yml does not scrape "
              f"{service}:{port}", file=sys.stderr)
        failed = True
    else:
        print(f"  {path}: TOML ok, metrics on :{port} scraped as {service}:{port}")

# YAML files and the TOML inside the Kubernetes ConfigMaps, where PyYAML is installed
# (python3-yaml; not required).
try:
    import glob, yaml
except ModuleNotFoundError:
    print("  python3 has no yaml module: compose.yaml and deploy/k8s not parsed")
    sys.exit(1 if failed else 0)
for path in ["deploy/compose.yaml"] + sorted(glob.glob("deploy/grafana/provisioning/*/*.yml")) \
        + sorted(glob.glob("deploy/k8s/*.yaml")):
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for d in docs:
            if d.get("kind") == "ConfigMap":
                for key, text in d.get("data", {}).items():
                    if key.endswith(".toml"):
                        tomllib.loads(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        print(f"  {path}: {e}", file=sys.stderr)
        failed = True
        continue
    print(f"  {path}: YAML ok")
sys.exit(1 if failed else 0)
PY

section "metric names (dashboard + alert rules)"
grep -ohE 'postern_[a-z_]+' "$dashboard" "$alerts" \
  | sed -E 's/_(bucket|sum|count)$//' \
  | LC_ALL=C sort -u >"$tmp/names"
echo "  $(wc -l <"$tmp/names") names"

if [ "$write_names" = 1 ]; then
  cp "$tmp/names" "$names_file"
  echo "  wrote $names_file"
fi
if [ -n "$names_out" ]; then
  if [ "$names_out" = "-" ]; then
    cat "$tmp/names"
  else
    cp "$tmp/names" "$names_out"
    echo "  wrote $names_out"
  fi
fi
if ! diff -u "$names_file" "$tmp/names" >"$tmp/names.diff" 2>&1; then
  echo "  $names_file is out of date (run: bash deploy/check.sh --write-names):" >&2
  cat "$tmp/names.diff" >&2
  exit 1
fi
echo "  $names_file is up to date"

section "deploy checks passed"
