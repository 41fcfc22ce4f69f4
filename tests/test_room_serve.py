"""`make workshop` serves the app to the network with XSRF protection on and prints the address to
share; links the app shows use that address."""
import ipaddress
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from test_browser import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_lan_address_is_an_address():
    from optlab.netaddr import lan_address
    assert ipaddress.ip_address(lan_address()).version == 4


def test_tensorboard_links_use_the_rooms_address(monkeypatch):
    from optlab.tensorboard import TensorBoard
    monkeypatch.setenv("OPTLAB_PUBLIC_HOST", "192.0.2.7")
    assert TensorBoard(1, "0.0.0.0", 6006, "/x").url == "http://192.0.2.7:6006/"
    assert TensorBoard(1, "127.0.0.1", 6006, "/x").url == "http://127.0.0.1:6006/"


def test_make_workshop_serves_the_room_and_prints_the_address(tmp_path, isolated_home):
    stamp = tmp_path / "installed"
    stamp.touch()                                     # newer than requirements.txt: no install
    port = free_port()
    env = dict(os.environ, OPTLAB_PUBLIC_HOST="192.0.2.7", OPTLAB_INSTRUCTOR_SECRET="room-secret-42")
    proc = subprocess.Popen(["make", "-s", "workshop", f"PY={sys.executable}", f"STAMP={stamp}", f"PORT={port}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    try:
        first = proc.stdout.readline() + proc.stdout.readline()
        assert f"Share this address with the room:  http://192.0.2.7:{port}/workshop" in first
        assert "room-secret-42" in first.splitlines()[1] and "room-secret-42" not in first.splitlines()[0]
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    assert r.read().strip() == b"ok"
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
                time.sleep(0.25)
        from optlab.netaddr import lan_address
        with urllib.request.urlopen(f"http://{lan_address()}:{port}/_stcore/health", timeout=5) as r:
            assert r.status == 200                    # reachable beyond the loopback interface
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
            assert "_streamlit_xsrf" in (r.headers.get("Set-Cookie") or "")   # XSRF protection is on
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
