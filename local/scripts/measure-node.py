#!/usr/bin/env python3
"""Ad-hoc figures for the node agent (needs root): pod start (create -> Ready, with the
kubectl baseline to subtract), resize (patch -> cgroup file changed), RSS and idle CPU of
cellmesh-local. Run: CELLMESH_LOCAL=target/debug/cellmesh-local python3 local/scripts/measure-node.py
"""
import subprocess, time, os, json, statistics, sys, glob
state = os.path.abspath(".measure-node")
subprocess.run(["rm", "-rf", state])
os.makedirs(state)
log = open(state + ".log", "w")
srv = subprocess.Popen([os.environ.get("CELLMESH_LOCAL", "target/debug/cellmesh-local"), "apiserver", "--listen", "127.9.8.7:0", "--state-dir", state,
    "--node", "--node-metrics-addr", "127.9.8.7:0", "--pod-cidr", "127.66.0.0/16", "--cgroup-parent", "cmmeas", "--log", "warn"],
    stdout=subprocess.PIPE, stderr=log, text=True)
for line in srv.stdout:
    if "listening" in line: break
env = dict(os.environ, KUBECONFIG=state + "/kubeconfig", HOME=state)
def k(*args, stdin=None):
    return subprocess.run(["kubectl", *args], env=env, input=stdin, capture_output=True, text=True, check=True).stdout
def rss():
    for l in open(f"/proc/{srv.pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
time.sleep(1.5)
k("get", "nodes")
print("RSS idle (apiserver+node, MiB):", rss())
POD = """apiVersion: v1
kind: Pod
metadata: {name: p%d}
spec:
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "sleep 100000"]
    resources: {requests: {cpu: 50m, memory: 16Mi}, limits: {cpu: 100m, memory: 64Mi}}
"""
starts = []
for i in range(10):
    t0 = time.monotonic()
    k("create", "-f", "-", stdin=POD % i)
    k("wait", "--for=condition=Ready", f"pod/p{i}", "--timeout=60s")
    starts.append(time.monotonic() - t0)
# kubectl's own cost: a create of a configmap plus a wait on an existing condition
base = []
for i in range(5):
    t0 = time.monotonic()
    k("create", "configmap", f"c{i}")
    k("wait", "--for=condition=Ready", "pod/p0", "--timeout=60s")
    base.append(time.monotonic() - t0)
print("pod start create->Ready (s): median %.3f min %.3f max %.3f; kubectl baseline median %.3f" % (statistics.median(starts), min(starts), max(starts), statistics.median(base)))
time.sleep(3)
print("RSS with 10 pods (MiB):", rss())
def cpu():
    f = open(f"/proc/{srv.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
c0 = cpu(); time.sleep(10); c1 = cpu()
print("cellmesh-local CPU with 10 idle pods: %.1f%% of one core" % ((c1 - c0) * 10))
pod = json.loads(k("get", "pod", "p0", "-o", "json"))
uid = pod["metadata"]["uid"]
quota = f"/sys/fs/cgroup/cpu/cmmeas/{uid}/c/cpu.cfs_quota_us"
lat = []; after_return = []
for i in range(10):
    cpu = 200 + 10 * i
    want = str(cpu * 100)
    t0 = time.monotonic()
    p = subprocess.Popen(["kubectl", "patch", "pod", "p0", "--subresource", "resize", "-p",
        json.dumps({"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": f"{cpu}m"}}}]}})], env=env, stdout=subprocess.DEVNULL)
    returned = None
    while True:
        if returned is None and p.poll() is not None: returned = time.monotonic()
        if open(quota).read().strip() == want: break
        time.sleep(0.001)
    t1 = time.monotonic()
    p.wait()
    if returned is None: returned = time.monotonic()
    lat.append(t1 - t0); after_return.append(t1 - returned)
print("resize kubectl patch start->cgroup changed (s): median %.3f max %.3f; cgroup changed %.3f s median relative to kubectl exit (negative = before kubectl exited)" % (statistics.median(lat), max(lat), statistics.median(after_return)))
srv.terminate(); srv.wait()
