"""A real mosquitto for the MQTT tests: plain and TLS listeners on free 127.0.0.1 ports, optional passwords.

Persistence is on, so retained messages (the cloud's desired state) survive a broker restart the way
they do on a production broker. The process is ours: started from the fixture, stopped by PID.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from tests.conftest import wait_for
from tests.iothub_standin import free_port, make_certs, port_free


class MqttBroker:
    def __init__(self, folder: Path, *, users: dict[str, str] | None = None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.certs = make_certs(folder / "certs")
        self.port = free_port()
        self.tls_port = free_port()
        self.users = users or {}
        self.proc: subprocess.Popen | None = None

    def _conf(self) -> Path:
        lines = ["per_listener_settings false", "persistence true", f"persistence_location {self.folder}/",
                 "autosave_interval 1", "user root", f"log_dest file {self.folder / 'mosquitto.log'}"]
        if self.users:
            passwd = self.folder / "passwd"
            passwd.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        lines += [f"listener {self.port} 127.0.0.1",
                  f"listener {self.tls_port} 127.0.0.1", f"cafile {self.certs['ca']}",
                  f"certfile {self.certs['cert']}", f"keyfile {self.certs['key']}"]
        conf = self.folder / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self._conf())], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(lambda: not port_free(self.port) and not port_free(self.tls_port), 20, what="mosquitto listening")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
            self.proc = None
        wait_for(lambda: port_free(self.port) and port_free(self.tls_port), 20, what="broker ports released")


class Cloud:
    """The fleet's side: a paho client that records everything under a vehicle and publishes to it."""

    def __init__(self, broker: MqttBroker, root: str, *, username: str | None = None,
                 password: str | None = None) -> None:
        self.broker = broker
        self.root = root
        self.messages: list[tuple[str, bytes, bool]] = []
        self.arrived: list[tuple[float, str]] = []  # (time.monotonic() at arrival, topic)
        self.lock = threading.Lock()
        self.connected = threading.Event()
        # A persistent session (QoS 1, fixed id): the broker queues what arrives while the cloud client
        # itself reconnects after a broker restart, as a production consumer would be set up.
        self.client = mqtt.Client(client_id=f"cloud-{root.replace('/', '-')}"[:60], clean_session=False)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async("127.0.0.1", broker.port)
        self.client.loop_start()
        wait_for(self.connected.is_set, 20, what="cloud client connected")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: int) -> None:
        if rc == 0:
            client.subscribe(f"{self.root}/#", qos=1)
            self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.arrived.append((time.monotonic(), msg.topic))

    def on(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == f"{self.root}/{suffix}"]

    def telemetry(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(t, p) for t, p, _ in self.messages if t.startswith(f"{self.root}/telemetry/")]

    def reported(self) -> dict[str, Any]:
        docs = self.on("twin/reported")
        return json.loads(docs[-1]) if docs else {}

    def publish(self, suffix: str, payload: bytes | str | dict, *, retain: bool = False) -> None:
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        self.client.publish(f"{self.root}/{suffix}", data, qos=1, retain=retain).wait_for_publish(10)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
