"""Python recipe P1: environment variables only, over HTTPS with a CA made in the test."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.live_server import LiveServer
from tests.support.server_fixtures import png_data_uri


def make_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fal-onprem test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, cert_path, key_path


SCRIPT = textwrap.dedent(
    """
    import sys
    import fal_client  # reads FAL_RUN_HOST / FAL_QUEUE_RUN_HOST at import time

    updates = []
    result = fal_client.subscribe(
        "test/echo",
        arguments={"image_url": sys.argv[1], "seed": 21, "steps": 2, "step_ms": 100},
        with_logs=True,
        on_queue_update=updates.append,
    )
    assert result["seed"] == 21, result
    assert result["image"]["url"].startswith("https://127.0.0.1:"), result
    assert any(isinstance(u, fal_client.InProgress) for u in updates), updates
    print("run:", fal_client.run("test/echo", arguments={"image_url": sys.argv[1], "seed": 3})["seed"])
    """
)


def test_python_recipe_p1_env_only_over_https(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    server = LiveServer(tmp_path, scheme="https", extra_args=["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)])
    server.start()
    try:
        host = f"127.0.0.1:{server.port}"
        env = {
            **os.environ,
            "FAL_KEY": "local-dummy",
            "FAL_RUN_HOST": f"{host}/run",
            "FAL_QUEUE_RUN_HOST": f"{host}/queue",
            "SSL_CERT_FILE": str(ca),
        }
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, png_data_uri()], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert "run: 3" in proc.stdout
    finally:
        server.stop()
