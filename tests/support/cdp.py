#!/usr/bin/env python3
"""Drives headless Chromium over the DevTools protocol (--remote-debugging-pipe:
NUL-terminated JSON on fds 3 and 4, so no websocket library is needed) to
use the status page the way an operator does: wait for the script's refresh,
paste a token under Admin, press a backend's drain/undrain button (or, with
BACKEND "-", the Admin section's failover/reload button), and watch the
table change. Prints one JSON object. ACTION "layout" with BACKEND "WxH"
instead loads the page in a WxH mobile viewport and reports its layout.

usage: cdp.py CHROMIUM PROFILE_DIR URL TOKEN ACTION BACKEND
  -> {"msg": "<#msg text>", "before": {...row...}, "after": {...row...}}
     or {"layout": {"scroll_width", "client_width", "images": [...]}}
     or {"error": "..."}
"""
import json, os, subprocess, sys, time

chromium, profile, url, token, action, backend = sys.argv[1:7]

# Chromium reads commands on its fd 3 and writes answers on its fd 4.
to_child_r, to_child_w = os.pipe()
from_child_r, from_child_w = os.pipe()

def child_fds():
    os.dup2(to_child_r, 3)
    os.dup2(from_child_w, 4)

proc = subprocess.Popen(
    [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
     "--no-first-run", "--disable-background-networking", "--disable-component-update",
     "--disable-sync", "--disable-dev-shm-usage", "--remote-debugging-pipe",
     "--user-data-dir=" + profile, "about:blank"],
    preexec_fn=child_fds, pass_fds=(3, 4),
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    env=dict(os.environ, HOME=profile))
os.close(to_child_r)
os.close(from_child_w)
wr = os.fdopen(to_child_w, "wb", buffering=0)
rd = os.fdopen(from_child_r, "rb", buffering=0)
buf = b""
next_id = 0

def send(method, params=None, session=None):
    global buf, next_id
    next_id += 1
    msg = {"id": next_id, "method": method, "params": params or {}}
    if session:
        msg["sessionId"] = session
    wr.write(json.dumps(msg).encode() + b"\0")
    while True:
        while b"\0" not in buf:
            chunk = rd.read(65536)
            if not chunk:
                raise RuntimeError("chromium closed the pipe during " + method)
            buf += chunk
        raw, buf = buf.split(b"\0", 1)
        m = json.loads(raw)
        if m.get("id") == next_id:
            if "error" in m:
                raise RuntimeError("%s: %s" % (method, m["error"]))
            return m.get("result", {})

def evaluate(session, expr):
    r = send("Runtime.evaluate", {"expression": expr, "awaitPromise": True,
                                  "returnByValue": True}, session)
    if "exceptionDetails" in r:
        raise RuntimeError("JS: %s" % json.dumps(r["exceptionDetails"])[:400])
    return r["result"].get("value")

# Resolves when cond() holds, rejects after ms.
WAIT = """new Promise(function(ok, fail){var t0=Date.now();(function p(){
try{var v=(%s);if(v)return ok(v);}catch(e){}
if(Date.now()-t0>%d)return fail(new Error(%s));setTimeout(p,50);})();})"""

def wait(session, cond, ms=5000):
    return evaluate(session, WAIT % (cond, ms, json.dumps("timeout waiting for: " + cond)))

ROW = """(function(){var r=document.querySelector('tr.backend[data-backend=%s]');
if(!r)return null;var b=r.querySelector('button[data-action]');
return {drained:r.getAttribute('data-drained'),healthy:r.getAttribute('data-healthy'),
cls:r.className,button:b?b.getAttribute('data-action'):null};})()""" % json.dumps(backend)

out = {}
try:
    target = send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    send("Page.enable", {}, session)
    if action == "layout":
        w, h = (int(v) for v in backend.split("x"))
        send("Emulation.setDeviceMetricsOverride", {"width": w, "height": h,
             "deviceScaleFactor": 1, "mobile": True}, session)
    send("Page.navigate", {"url": url}, session)
    wait(session, "document.getElementById('updated').textContent.indexOf('updated ')===0")
    if action == "layout":
        wait(session, "Array.prototype.every.call(document.querySelectorAll('img.chart'),"
                      "function(i){return i.complete;})")
        out["layout"] = evaluate(session, """({scroll_width:document.documentElement.scrollWidth,
client_width:document.documentElement.clientWidth,
images:Array.prototype.map.call(document.querySelectorAll('img.chart'),function(i){
return {chart:i.getAttribute('data-chart')||i.id,natural_width:i.naturalWidth,width:i.getBoundingClientRect().width};})})""")
        raise StopIteration
    out["before"] = evaluate(session, ROW)
    # Paste the token and save it, as a person would.
    evaluate(session, """(function(){document.querySelector('#admin details').open=true;
document.getElementById('token').value=%s;document.getElementById('save-token').click();
return true;})()""" % json.dumps(token))
    wait(session, "document.getElementById('msg').textContent.indexOf('token saved')===0")
    if backend == "-":
        button, said = "#admin button[data-action=%s]" % json.dumps(action), action + ": "
    else:
        button = "tr.backend[data-backend=%s] button[data-action=%s]" % (json.dumps(backend), json.dumps(action))
        said = action + " "
    evaluate(session, "(function(){document.querySelector(%s).click();return true;})()" % json.dumps(button))
    out["msg"] = wait(session, "document.getElementById('msg').textContent.indexOf(%s)===0 && "
                      "document.getElementById('msg').textContent" % json.dumps(said))
    if backend != "-":
        want = "true" if action == "drain" else "false"
        try:
            wait(session, "(%s||{}).drained===%s" % (ROW, json.dumps(want)), 3000)
        except RuntimeError:
            pass  # reported through "after"
    out["after"] = evaluate(session, ROW)
except StopIteration:
    pass
except Exception as e:
    out["error"] = str(e)
finally:
    try:
        send("Browser.close")
    except Exception:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
print(json.dumps(out), flush=True)
sys.exit(1 if "error" in out else 0)
