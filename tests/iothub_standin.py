"""A local IoT Hub stand-in for the real azure-iot-device SDK: mosquitto with TLS plus a responder.

mosquitto listens with TLS on 127.0.0.1:8883 (the SDK's hard-coded port) for the agent and on a
plain free port for the responder. The responder speaks IoT Hub's MQTT protocol from the hub's
side: it answers twin GET and reported PATCH, pushes desired patches, invokes direct methods and
records telemetry with the properties decoded from the topic's property bag. `$iothub` topics carry
no device id, so one device per broker. A small HTTP server stands in for IoT Edge's workload API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import shutil
import signal
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import paho.mqtt.client as mqtt

from tests.conftest import wait_for

TLS_PORT = 8883
HUB = "myhub.azure-devices.net"
DEVICE_KEY = base64.b64encode(b"vehicle-agent-test-device-key-32").decode()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA and a server cert for localhost / 127.0.0.1 / the hub name (what newer Python checks)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.ext").write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
                                   "subjectKeyIdentifier=hash\n")
    (folder / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        f"subjectAltName=DNS:localhost,DNS:{HUB},IP:127.0.0.1\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=vehicle-agent test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=folder)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=folder)
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}


def make_device_cert(folder: Path, ca: dict[str, Path], device: str, pass_phrase: str | None = None) -> dict[str, Path]:
    """A device certificate (CN = device id, clientAuth) signed by `ca`; the key encrypted when a pass phrase is given."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "device.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                       "extendedKeyUsage=clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "plain.key", "-out", "device.csr",
             "-subj", f"/CN={device}", cwd=folder)
    _openssl("x509", "-req", "-in", "device.csr", "-CA", str(ca["ca"]), "-CAkey", str(ca["ca"].with_suffix(".key")),
             "-CAcreateserial", "-out", "device.pem", "-days", "2", "-extfile", "device.ext", cwd=folder)
    if pass_phrase is None:
        (folder / "plain.key").rename(folder / "device.key")
    else:
        _openssl("pkey", "-in", "plain.key", "-aes256", "-passout", f"pass:{pass_phrase}", "-out", "device.key", cwd=folder)
        (folder / "plain.key").unlink()
    return {"cert": folder / "device.pem", "key": folder / "device.key"}


HUB_MAX_PACKET = 256 * 1024


class Broker:
    """mosquitto on 127.0.0.1: TLS 8883 for the SDK, a plain port for the responder; persistent sessions."""

    def __init__(self, folder: Path, certs: dict[str, Path]) -> None:
        self.folder = folder
        self.certs = certs
        self.plain_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.refuse_all = False
        self.require_client_cert = False  # x509 devices: only clients with a certificate of the CA, named by its CN

    def _write_conf(self) -> Path:
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        auth = "allow_anonymous false\npassword_file " + str(self.folder / "passwd") if self.refuse_all \
            else "allow_anonymous true"
        if self.refuse_all:
            (self.folder / "passwd").write_text("")
        conf = self.folder / "mosquitto.conf"
        lines = [
            "per_listener_settings false", "persistence true", f"persistence_location {data}/",
            "autosave_interval 1", "user root", "log_dest file " + str(self.folder / "mosquitto.log"),
            "log_type all",
            # IoT Hub's limit: a device-to-cloud message over 256 KB is refused and the client disconnected
            f"max_packet_size {HUB_MAX_PACKET}",
            auth,
            f"listener {TLS_PORT} 127.0.0.1",
            f"cafile {self.certs['ca']}", f"certfile {self.certs['cert']}", f"keyfile {self.certs['key']}",
            *(["require_certificate true", "use_identity_as_username true"] if self.require_client_cert else []),
            f"listener {self.plain_port} 127.0.0.1",
        ]
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        if not port_free(TLS_PORT):
            raise RuntimeError(f"port {TLS_PORT} is taken on 127.0.0.1 (an orphaned mosquitto?); the SDK needs it")
        conf = self._write_conf()
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(lambda: not port_free(TLS_PORT) and not port_free(self.plain_port), 20, what="mosquitto listening")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
            self.proc = None
        wait_for(lambda: port_free(TLS_PORT), 20, what="port 8883 released")

    def wipe(self) -> None:
        shutil.rmtree(self.folder / "data", ignore_errors=True)


@dataclass
class Telemetry:
    topic: str
    properties: dict[str, str]
    body: bytes


@dataclass
class Responder:
    """IoT Hub's side of the protocol, on the broker's plain listener (paho, its own thread)."""

    port: int
    device: str = "car-1"
    desired: dict[str, Any] = field(default_factory=lambda: {"$version": 1})
    reported: dict[str, Any] = field(default_factory=lambda: {"$version": 1})
    telemetry: list[Telemetry] = field(default_factory=list)
    reported_patches: list[dict[str, Any]] = field(default_factory=list)
    twin_gets: int = 0
    method_results: dict[str, tuple[int, Any]] = field(default_factory=dict)

    def start(self) -> None:
        self.lock = threading.Lock()
        # A persistent session: telemetry published while the responder reconnects after a broker
        # restart is queued for it, as IoT Hub keeps it for its consumers.
        self.client = mqtt.Client(client_id="iothub-standin", clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 1)
        self.connected = threading.Event()
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(20), "responder could not connect to the stand-in broker"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, rc) -> None:
        # A '#' subscription never sees $iothub topics: subscribe to them explicitly.
        client.subscribe([("$iothub/twin/GET/#", 1), ("$iothub/twin/PATCH/properties/reported/#", 1),
                          ("$iothub/methods/res/#", 1), ("devices/+/messages/events/#", 1),
                          ("devices/+/modules/+/messages/events/#", 1)])
        self.connected.set()

    @staticmethod
    def _rid(topic: str) -> str:
        return topic.split("$rid=")[1].split("&")[0]

    def _on_message(self, client, userdata, msg) -> None:
        topic = msg.topic
        if topic.startswith("$iothub/twin/GET/"):
            with self.lock:
                self.twin_gets += 1
                doc = {"desired": dict(self.desired), "reported": dict(self.reported)}
            client.publish(f"$iothub/twin/res/200/?$rid={self._rid(topic)}", json.dumps(doc), qos=1)
        elif topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            patch = json.loads(msg.payload or b"{}")
            with self.lock:
                self.reported_patches.append(patch)
                self.reported.update(patch)
                self.reported["$version"] += 1
                version = self.reported["$version"]
            client.publish(f"$iothub/twin/res/204/?$rid={self._rid(topic)}&$version={version}", b"", qos=1)
        elif topic.startswith("$iothub/methods/res/"):
            status = int(topic.split("/")[3])
            with self.lock:
                self.method_results[self._rid(topic)] = (status, json.loads(msg.payload) if msg.payload else None)
        elif "/messages/events/" in topic:
            bag = topic.split("/messages/events/", 1)[1]
            props = {}
            for pair in filter(None, bag.split("&")):
                key, _, value = pair.partition("=")
                props[unquote(key)] = unquote(value)
            with self.lock:
                self.telemetry.append(Telemetry(topic, props, bytes(msg.payload)))

    # ------------------------------------------------------------- hub -> device
    def push_desired(self, patch: dict[str, Any]) -> int:
        """A desired patch as the hub sends it (its body carries $version, or the SDK drops it)."""
        with self.lock:
            version = self.desired["$version"] + 1
            for k, v in patch.items():
                if v is None:
                    self.desired.pop(k, None)
                else:
                    self.desired[k] = v
            self.desired["$version"] = version
        body = {**patch, "$version": version}
        self.client.publish(f"$iothub/twin/PATCH/properties/desired/?$version={version}", json.dumps(body), qos=1)
        return version

    def push_raw(self, body: bytes) -> int:
        """A desired patch of any bytes, as a broken or hostile hub could send it (the twin is not changed)."""
        with self.lock:
            version = self.desired["$version"] + 1
            self.desired["$version"] = version
        self.client.publish(f"$iothub/twin/PATCH/properties/desired/?$version={version}", body, qos=1)
        return version

    def set_twin(self, desired: dict[str, Any]) -> None:
        """Change the twin without telling the device (it is offline, or the hub was re-created)."""
        with self.lock:
            self.desired = dict(desired)

    def invoke(self, name: str, payload: Any = None, timeout: float = 30) -> tuple[int, Any]:
        rid = uuid.uuid4().hex
        self.client.publish(f"$iothub/methods/POST/{name}/?$rid={rid}", json.dumps(payload), qos=1)
        return wait_for(lambda: self.method_results.get(rid), timeout, what=f"method {name} response")

    def acks(self, key: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p[key] for p in self.reported_patches if isinstance(p.get(key), dict) and "ac" in p[key]]


class WorkloadAPI:
    """IoT Edge's workload API, the two calls create_from_edge_environment makes (HTTP on 127.0.0.1)."""

    def __init__(self, ca_pem: str, module_key: bytes) -> None:
        self.ca_pem = ca_pem
        self.key = module_key
        self.calls: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                outer.calls.append(self.path)
                self._reply({"certificate": outer.ca_pem})

            def do_POST(self) -> None:
                outer.calls.append(self.path)
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                digest = hmac.new(outer.key, base64.b64decode(req["data"]), hashlib.sha256).digest()
                self._reply({"digest": base64.b64encode(digest).decode()})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def device_connection_string(device: str = "car-1", key: str = DEVICE_KEY, module: str | None = None) -> str:
    mod = f";ModuleId={module}" if module else ""
    return f"HostName={HUB};DeviceId={device}{mod};SharedAccessKey={key};GatewayHostName=localhost"


def edge_environment(workload: WorkloadAPI, device: str = "car-1", module: str = "vehicle-agent") -> dict[str, str]:
    return {"IOTEDGE_IOTHUBHOSTNAME": HUB, "IOTEDGE_DEVICEID": device, "IOTEDGE_MODULEID": module,
            "IOTEDGE_GATEWAYHOSTNAME": "localhost", "IOTEDGE_MODULEGENERATIONID": "gen1",
            "IOTEDGE_WORKLOADURI": workload.url, "IOTEDGE_APIVERSION": "2019-01-30"}


