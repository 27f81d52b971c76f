#!/usr/bin/python3
"""Parses Prometheus text exposition from stdin with the reference parser
(Debian's python3-prometheus-client) and prints what it found as JSON:
{"families": [{"name", "type", "samples": [{"name", "labels", "value"}]}]}
or {"error": "..."} (exit 1) when the text does not parse."""
import json, math, sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    print(json.dumps({"error": "prometheus_client missing: %s" % e}))
    sys.exit(2)

def num(v):
    # JSON has no NaN/Inf; keep them visible as strings.
    return v if math.isfinite(v) else str(v)

text = sys.stdin.read()
try:
    fams = []
    for f in text_string_to_metric_families(text):
        fams.append({
            "name": f.name,
            "type": f.type,
            "documentation": f.documentation,
            "samples": [{"name": s.name, "labels": dict(s.labels), "value": num(s.value)}
                        for s in f.samples],
        })
except Exception as e:
    print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
    sys.exit(1)
print(json.dumps({"families": fams}))
