#!/usr/bin/env python3
"""Starts the servers the remote tests run against, on 127.0.0.1 only:

- moto's S3 server with authentication on: an IAM user with an S3 policy and
  an access key, and a bucket; requests without a valid signature fail.
  S3_UPLOAD_PART_MIN_SIZE stays at its real default (5 MiB).
- nginx serving a folder over plain HTTP and over TLS with a test CA.
- a fault-injecting proxy in front of each (scripts/fault_proxy.py).

Writes `KEY=VALUE` lines to --env-file once everything answers, then runs
until it gets SIGTERM or SIGINT (or its parent dies), and stops the servers.
The access key is written only to the env file, never printed.

    python scripts/test-servers.py --dir /tmp/srv --env-file /tmp/srv/env
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BUCKET = "checkpack-test"
REGION = "us-east-1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port, process, name, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            sys.exit(f"test-servers: {name} exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"test-servers: {name} did not answer on port {port} within {timeout} s")


def start_moto(workdir, children):
    port = free_port()
    env = dict(os.environ)
    env.pop("S3_UPLOAD_PART_MIN_SIZE", None)   # the real 5 MiB minimum
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    log = open(os.path.join(workdir, "moto.log"), "wb")
    process = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log, env=env)
    children.append(process)
    wait_for(port, process, "moto_server")
    endpoint = f"http://127.0.0.1:{port}"

    # Set up while authentication is still off, then turn it on.
    import boto3
    anyone = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", **anyone)
    iam.create_user(UserName="checkpack")
    policy = iam.create_policy(PolicyName="checkpack-s3", PolicyDocument=(
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
    iam.attach_user_policy(UserName="checkpack", PolicyArn=policy["Policy"]["Arn"])
    key = iam.create_access_key(UserName="checkpack")["AccessKey"]
    boto3.client("s3", **anyone).create_bucket(Bucket=BUCKET)
    request = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request).read()
    return endpoint, key


def make_certificates(workdir):
    """A test CA and a server certificate for 127.0.0.1 signed by it."""
    ca_key, ca = os.path.join(workdir, "ca.key"), os.path.join(workdir, "ca.pem")
    key, csr, cert = (os.path.join(workdir, n) for n in ("server.key", "server.csr", "server.pem"))
    ext = os.path.join(workdir, "server.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=checkpack test CA",
                    "-keyout", ca_key, "-out", ca], **quiet)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-keyout", key, "-out", csr], **quiet)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                    "-days", "2", "-extfile", ext, "-out", cert], **quiet)
    return ca, key, cert


def start_nginx(workdir, children):
    root = os.path.join(workdir, "www")
    os.makedirs(root, exist_ok=True)
    ca, key, cert = make_certificates(workdir)
    plain, tls = free_port(), free_port()
    conf = os.path.join(workdir, "nginx.conf")
    temp = os.path.join(workdir, "nginx-temp")
    os.makedirs(temp, exist_ok=True)
    with open(conf, "w") as f:
        # As root, nginx's workers would run as nobody, who cannot enter a private temporary folder.
        f.write(("user root;\n" if os.geteuid() == 0 else "") + f"""
worker_processes 2;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
    access_log {workdir}/nginx-access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    sendfile on;
    server {{
        listen 127.0.0.1:{plain};
        root {root};
    }}
    server {{
        listen 127.0.0.1:{tls} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {root};
    }}
}}
""")
    log = open(os.path.join(workdir, "nginx.log"), "wb")
    process = subprocess.Popen(["nginx", "-c", conf, "-p", workdir, "-g", "daemon off;"], stdout=log, stderr=log)
    children.append(process)
    wait_for(plain, process, "nginx")
    wait_for(tls, process, "nginx (TLS)")
    return root, f"http://127.0.0.1:{plain}", f"https://127.0.0.1:{tls}", ca


def start_proxy(upstream_port, workdir, name, children):
    port = free_port()
    log = open(os.path.join(workdir, f"proxy-{name}.log"), "wb")
    process = subprocess.Popen([sys.executable, os.path.join(HERE, "fault_proxy.py"), str(port), str(upstream_port)],
                               stdout=log, stderr=log)
    children.append(process)
    wait_for(port, process, f"fault proxy for {name}")
    return f"http://127.0.0.1:{port}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--env-file", required=True)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    children = []

    def stop(*_):
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        s3, key = start_moto(args.dir, children)
        root, http, https, ca = start_nginx(args.dir, children)
        s3_proxy = start_proxy(int(s3.rsplit(":", 1)[1]), args.dir, "s3", children)
        http_proxy = start_proxy(int(http.rsplit(":", 1)[1]), args.dir, "http", children)
    except BaseException:
        stop()
        raise
    lines = {
        "CHECKPACK_TEST_S3_ENDPOINT": s3,
        "CHECKPACK_TEST_S3_PROXY": s3_proxy,
        "CHECKPACK_TEST_S3_BUCKET": BUCKET,
        "CHECKPACK_TEST_S3_ACCESS_KEY_ID": key["AccessKeyId"],
        "CHECKPACK_TEST_S3_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        "CHECKPACK_TEST_S3_REGION": REGION,
        "CHECKPACK_TEST_HTTP_ROOT": root,
        "CHECKPACK_TEST_HTTP_URL": http,
        "CHECKPACK_TEST_HTTP_PROXY": http_proxy,
        "CHECKPACK_TEST_HTTPS_URL": https,
        "CHECKPACK_TEST_CA_BUNDLE": ca,
    }
    partial = args.env_file + ".partial"
    with open(partial, "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in lines.items())
    os.rename(partial, args.env_file)
    print("test-servers: ready", flush=True)
    parent = os.getppid()
    while True:
        time.sleep(1)
        if os.getppid() != parent:   # the parent died without stopping us
            stop()
        for child in children:
            if child.poll() is not None:
                print(f"test-servers: {child.args[0]} exited with status {child.returncode}", file=sys.stderr)
                stop()


if __name__ == "__main__":
    main()
