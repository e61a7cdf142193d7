# SPDX-License-Identifier: MIT
"""Tests for sendzc.py against the real kernel: real rings, real sockets.

Network tests run inside network namespaces that the tests create and always
delete (a sink: an ifb device that drops every packet; a pair: two namespaces
joined by veth). Traffic goes only to loopback or to addresses inside those
namespaces. Tests that need root, ifb or a newer kernel skip with the reason.
"""

import contextlib
import ctypes
import errno
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import sendzc

HERE = os.path.dirname(os.path.abspath(__file__))
TOOL = os.path.join(HERE, "sendzc.py")
IS_ROOT = os.geteuid() == 0
HAVE_IP = shutil.which("ip") is not None

needs_root = pytest.mark.skipif(not IS_ROOT or not HAVE_IP,
                                reason="needs root and iproute2 to create network namespaces")

# Addresses inside the namespaces the tests make: the benchmarking ranges
# (RFC 2544's 198.18.0.0/15, RFC 5180's 2001:2::/48), never routed anywhere.
SINK4, SINK6 = "198.18.0.2", "2001:2::2"          # out of the sink's ifb, dropped
PAIR4 = ("198.18.1.1", "198.18.1.2")              # veth: sender side, receiver side
PAIR6 = ("2001:2:1::1", "2001:2:1::2")
_names = itertools.count()


# --- namespaces ------------------------------------------------------------

def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@contextlib.contextmanager
def netns():
    """A fresh named network namespace, deleted on the way out whatever happens."""
    name = f"szt{os.getpid()}-{next(_names)}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        ip("netns", "del", name, check=False)


def make_sink(ns):
    """An ifb device with MTU 65535: every packet routed out of it is dropped."""
    made = ip("-n", ns, "link", "add", "ifb0", "type", "ifb", check=False)
    if made.returncode:
        pytest.skip(f"no ifb device here: {made.stderr.strip()}")
    ip("-n", ns, "link", "set", "ifb0", "mtu", "65535", "up")
    ip("-n", ns, "addr", "add", "198.18.0.1/24", "dev", "ifb0")
    ip("-n", ns, "addr", "add", "2001:2::1/64", "dev", "ifb0", "nodad")


@pytest.fixture(scope="module")
def sink():
    if not IS_ROOT or not HAVE_IP:
        pytest.skip("needs root and iproute2 to create network namespaces")
    with netns() as ns:
        make_sink(ns)
        yield ns


@pytest.fixture(scope="module")
def pair():
    """Two namespaces joined by a veth pair: (sender ns, receiver ns)."""
    if not IS_ROOT or not HAVE_IP:
        pytest.skip("needs root and iproute2 to create network namespaces")
    with netns() as tx, netns() as rx:
        ip("link", "add", "szta", "netns", tx, "type", "veth", "peer", "name", "sztb", "netns", rx)
        for ns, dev, a4, a6 in ((tx, "szta", PAIR4[0], PAIR6[0]), (rx, "sztb", PAIR4[1], PAIR6[1])):
            ip("-n", ns, "addr", "add", f"{a4}/24", "dev", dev)
            ip("-n", ns, "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            ip("-n", ns, "link", "set", dev, "up")
        yield tx, rx


def tool(*args, ns=None, timeout=60, **kw):
    """Run sendzc.py (inside namespace ns if given); return the CompletedProcess."""
    cmd = [sys.executable, TOOL, *map(str, args)]
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def tool_json(*args, ns=None, **kw):
    """Run the tool with --json and return its document; fail with its stderr."""
    p = tool("--json", *args, ns=ns, **kw)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def kernel_at_least(major, minor):
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def mappings():
    with open("/proc/self/maps") as f:
        return len(f.readlines())


# =============================================================================
# The kernel ABI
# =============================================================================

def test_struct_sizes_and_offsets_match_the_kernel_header():
    assert ctypes.sizeof(sendzc.io_uring_params) == 120
    assert ctypes.sizeof(sendzc.io_uring_sqe) == 64
    assert ctypes.sizeof(sendzc.io_uring_cqe) == 16
    assert ctypes.sizeof(sendzc.io_sqring_offsets) == ctypes.sizeof(sendzc.io_cqring_offsets) == 40
    sqe = sendzc.io_uring_sqe
    assert (sqe.opcode.offset, sqe.fd.offset, sqe.addr.offset, sqe.len.offset) == (0, 4, 16, 24)
    assert (sqe.msg_flags.offset, sqe.user_data.offset, sqe.buf_index.offset) == (28, 32, 40)
    assert (sqe.ioprio.offset, sqe.file_index.offset, sqe.addr3.offset) == (2, 44, 48)
    # Members of one union share their bytes, as in C.
    assert sqe.msg_flags.offset == sqe.rw_flags.offset == sqe.nop_flags.offset
    assert sqe.off.offset == sqe.addr2.offset == sqe.cmd_op.offset == 8
    cqe = sendzc.io_uring_cqe
    assert (cqe.user_data.offset, cqe.res.offset, cqe.flags.offset) == (0, 8, 12)


def test_opcodes_carry_their_upstream_numbers():
    assert sendzc.IORING_OP_SEND_ZC == 47 and sendzc.IORING_OP_SENDMSG_ZC == 48
    assert sendzc.IORING_OP_SEND == 26 and sendzc.IORING_OP_NOP == 0
    assert sendzc.OPCODE_NAMES[47] == "IORING_OP_SEND_ZC"
    assert sendzc.IORING_CQE_F_MORE == 2 and sendzc.IORING_CQE_F_NOTIF == 8


def test_prep_send_zc_fixed_is_prep_send_zc_plus_two_fields():
    a, b = sendzc.io_uring_sqe(), sendzc.io_uring_sqe()
    sendzc.prep_send_zc(a, 3, 0x1000, 100, 0, sendzc.IORING_SEND_ZC_REPORT_USAGE)
    sendzc.prep_send_zc_fixed(b, 3, 0x1000, 100, 0, sendzc.IORING_SEND_ZC_REPORT_USAGE, 5)
    assert b.ioprio == a.ioprio | sendzc.IORING_RECVSEND_FIXED_BUF and b.buf_index == 5
    b.ioprio, b.buf_index = a.ioprio, 0
    assert bytes(a) == bytes(b)
    assert a.opcode == sendzc.IORING_OP_SEND_ZC and a.fd == 3 and a.len == 100


# =============================================================================
# The ring
# =============================================================================

@pytest.mark.parametrize("head", [0, 5, 2**32 - 3, 2**32 - 1])
def test_ring_slices_wrap_at_the_end_of_the_array(head):
    entries, count = 8, 6
    pieces = sendzc.ring_slices(head, count, entries)
    slots = [s for a, b in pieces for s in range(a, b)]
    assert slots == [(head + k) % 2**32 % entries for k in range(count)]
    # The number of entries between two free-running u32 counters survives wrap.
    tail = (head + count) & sendzc.U32
    assert (tail - head) & sendzc.U32 == count


def test_nop_round_trip_counts_and_wraps_the_ring():
    """Far more requests than slots: every SQE consumed, every CQE reaped, in order."""
    with sendzc.Ring(8) as ring:
        sqe = sendzc.io_uring_sqe()
        batch, rounds = 5, 100                    # 5 does not divide 8: batches straddle the end
        for n in range(rounds):
            parts = []
            for k in range(batch):
                sendzc.prep_nop(sqe)
                sqe.user_data = n * batch + k
                parts.append(bytes(sqe))
            ring.place(b"".join(parts))
            assert ring.submit_and_wait(batch) == batch
            assert ring.cq_ready() == batch
            assert ring.peek_user_data(batch) == list(range(n * batch, (n + 1) * batch))
            res, flags = ring.peek()
            assert res == [0] * batch and flags == [0] * batch
            ring.cq_advance(batch)
        total = batch * rounds
        assert ring.sq_tail == ring.sq_head == total        # the kernel consumed all
        assert ring.cq_tail == ring.cq_head == total        # and we reaped all
        assert ring.submitted == ring.reaped == total
        assert ring.cq_overflow == 0


def test_submit_and_reap_wraps_the_completion_ring():
    with sendzc.Ring(4, cq_entries=8) as ring:
        sqe = sendzc.io_uring_sqe()
        sendzc.prep_nop(sqe)
        got = 0
        for _ in range(50):
            ring.place(bytes(sqe) * 3)             # 3 does not divide 8 either
            res, flags = ring.submit_and_reap(3)
            assert res == [0] * 3 and flags == [0] * 3
            got += 3
        assert ring.cq_head == got == 150


def test_probe_reports_the_opcodes_this_kernel_has():
    with sendzc.Ring(4) as ring:
        probe = ring.probe()
    assert probe.has(sendzc.IORING_OP_NOP) and probe.has(sendzc.IORING_OP_SEND)
    if kernel_at_least(6, 0):
        assert probe.has(sendzc.IORING_OP_SEND_ZC)
    if kernel_at_least(6, 1):
        assert probe.has(sendzc.IORING_OP_SENDMSG_ZC)


def test_wait_with_a_timeout_returns_false_when_nothing_comes():
    with sendzc.Ring(4) as ring:
        ring.register_ring_fd()
        for _ in range(3):          # the EXT_ARG path, repeatedly: argsz must be a clean size_t
            assert ring.wait_cqes(1, 0.01) is False


def test_send_zc_to_a_unix_socket_still_posts_f_more_then_a_notification():
    """The two-CQE contract holds even for a refused send: count on F_MORE, not on res."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, sendzc.Ring(4) as ring:
        buf = ctypes.create_string_buffer(16)
        sqe = sendzc.io_uring_sqe()
        sendzc.prep_send_zc(sqe, a.fileno(), ctypes.addressof(buf), 16, 0, 0)
        sqe.user_data = 42
        ring.place(bytes(sqe))
        ring.submit_and_wait(2)
        assert ring.peek_user_data(2) == [42, 42]
        res, flags = ring.peek()
        assert res[0] == -errno.EOPNOTSUPP and flags[0] == sendzc.IORING_CQE_F_MORE
        assert flags[1] == sendzc.IORING_CQE_F_NOTIF
        ring.cq_advance(2)


def test_a_bad_buffer_address_is_efault_in_the_cqe():
    with sendzc.Ring(4) as ring, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.connect(s.getsockname())
        sqe = sendzc.io_uring_sqe()
        sendzc.prep_send(sqe, s.fileno(), 8, 100, 0)     # address 8: never mapped
        ring.place(bytes(sqe))
        ring.submit_and_wait(1)
        res, _ = ring.peek()
        assert res == [-errno.EFAULT]
        ring.cq_advance(1)


def test_bad_setup_flags_are_einval():
    p = sendzc.io_uring_params()
    p.flags = 1 << 31
    with pytest.raises(OSError) as e:
        sendzc.io_uring_setup(4, p)
    assert e.value.errno == errno.EINVAL and "io_uring_setup" in str(e.value)


# =============================================================================
# The sender, in process: nothing leaks
# =============================================================================

def loopback_run(**kw):
    """One in-process run to a UDP socket on loopback that nobody reads."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        cfg = sendzc.SendConfig(proto="udp", addr="127.0.0.1", port=rx.getsockname()[1],
                                size=1400, seconds=0.2, **kw)
        with contextlib.ExitStack() as stack:
            sock = sendzc.open_tx_socket("udp", socket.AF_INET, cfg.addr, cfg.port)
            stack.callback(sock.close)
            payload = sendzc.Payload(cfg.size)
            stack.callback(payload.close)
            sender = sendzc.UringSender(cfg, sock, payload, stack)
            return sender.run()


@pytest.mark.parametrize("zc,fixed", [(True, True), (True, False), (False, False)])
def test_a_run_releases_every_fd_and_mapping(zc, fixed):
    loopback_run(zc=zc, fixed_buf=fixed)          # warm up imports and caches
    fds, maps = open_fds(), mappings()
    result = loopback_run(zc=zc, fixed_buf=fixed)
    assert result.requests > 0 and result.error is None
    assert (open_fds(), mappings()) == (fds, maps)


def test_loopback_zero_copy_is_reported_as_copied():
    if not kernel_at_least(6, 2):
        pytest.skip("IORING_SEND_ZC_REPORT_USAGE needs Linux 6.2")
    result = loopback_run()
    assert result.notifications == result.requests > 0
    assert result.zc_copied == result.notifications      # loopback always copies


# =============================================================================
# The sender into a sink: the seed's runs
# =============================================================================

def check_row(row, size):
    assert row["requests"] > 0 and row["eagain"] == 0 and row["error"] is None
    assert row["bytes"] == row["requests"] * size
    if row["mode"].startswith(("send_zc", "sendmsg_zc")):
        assert row["notifications"] == row["requests"]      # one notification per request
        if row["zc_copied"] is not None:
            assert row["zc_copied"] == 0                    # the sink is really zero-copy
    else:
        assert row["notifications"] == 0


@pytest.mark.parametrize("opts", [[], ["--no-fixed-buf"], ["-f"], ["--no-zc"], ["-r", "1"],
                                  ["--sendmsg"], ["--sendmsg", "--no-fixed-buf"]],
                         ids=lambda o: " ".join(o) or "default")
def test_udp_into_the_sink(sink, opts):
    size = 65435
    doc = tool_json("-4", "-D", SINK4, "-t", "0.3", *opts, "udp", ns=sink)
    row = doc["rows"][0]
    check_row(row, size)
    assert row["size"] == size and row["proto"] == "udp"


def test_udp_ipv6_into_the_sink(sink):
    row = tool_json("-6", "-D", SINK6, "-t", "0.3", "-s", "1400", "udp", ns=sink)["rows"][0]
    check_row(row, 1400)
    assert row["family"] == "ipv6"


def test_the_seed_line_says_txc_equals_tx(sink):
    p = tool("-4", "-D", SINK4, "-t", "0.3", "udp", ns=sink)
    assert p.returncode == 0, p.stderr
    first = p.stdout.splitlines()[0]
    tx = int(first.split("tx=")[1].split()[0])
    txc = int(first.split("txc=")[1].split(",")[0])
    assert tx == txc > 0
    assert "report zero-copy" in p.stdout


def test_raw_sends_with_cap_net_raw(sink):
    row = tool_json("-4", "-D", SINK4, "-t", "0.3", "--no-zc", "-s", "1400", "raw", ns=sink)["rows"][0]
    check_row(row, 1400)


# =============================================================================
# TCP across a veth pair, checked by a receiver
# =============================================================================

# A minimal receiver for the core tests: counts bytes, checks the pattern by
# stream offset, prints one JSON line. (The tool's own `rx` is tested apart.)
MINI_RX = textwrap.dedent("""
    import json, socket, sys
    fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", int(sys.argv[2]))); s.listen(1)
    print("ready", flush=True)
    c, _ = s.accept()
    buf = bytearray(1 << 20); n = 0; bad = None
    pat = bytes(range(97, 123)) * ((1 << 20) // 26 + 2)
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        if bad is None and buf[:k] != pat[n % 26:n % 26 + k]:
            bad = n
        n += k
    print(json.dumps({"bytes": n, "bad": bad}))
""")


@pytest.mark.parametrize("family,opts", [(4, []), (4, ["--no-zc"]), (4, ["--no-fixed-buf"]),
                                         (6, []), (4, ["--sendmsg"])])
def test_tcp_receiver_gets_every_byte_in_order(pair, family, opts):
    txns, rxns = pair
    dst = PAIR4[1] if family == 4 else PAIR6[1]
    port = 8100 + next(_names)
    rx = subprocess.Popen(["ip", "netns", "exec", rxns, sys.executable, "-c", MINI_RX,
                           str(family), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout.readline().strip() == "ready"
        doc = tool_json(f"-{family}", "-D", dst, "-p", port, "-t", "0.5", "-s", "65435", *opts,
                        "tcp", ns=txns)
        got = json.loads(rx.communicate(timeout=30)[0])
    finally:
        rx.kill()
    row = doc["rows"][0]
    check_row(row, 65435) if not row["mode"].startswith(("send_zc", "sendmsg_zc")) else None
    assert row["requests"] > 0 and row["error"] is None
    assert got["bytes"] == row["bytes"]            # the receiver counted what the sender reports
    assert got["bad"] is None                      # ... and every byte is the pattern, in order
    if row["mode"] != "send":
        assert row["notifications"] == row["requests"]


# =============================================================================
# Portability
# =============================================================================

def test_runs_on_python_3_9():
    vermin = shutil.which("vermin")
    if vermin is None:
        pytest.skip("vermin is not installed (pip install vermin); CI installs it")
    p = subprocess.run([vermin, "--no-tips", "--violations", "-t=3.9-", TOOL],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


# =============================================================================
# The benchmark (sendzc.py bench)
# =============================================================================


# =============================================================================
# The receiver (sendzc.py rx)
# =============================================================================

def start_rx(*args, ns=None):
    """`sendzc.py rx --json ARGS` in the background, returned once it is listening."""
    cmd = [sys.executable, TOOL, "rx", "--json", *map(str, args)]
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    if "waiting for a sender" not in line:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"rx did not start: {line}{err}")
    return p


def finish_rx(p, timeout=30):
    """Wait for rx to end: (exit status, its JSON document or None, its stderr)."""
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, (json.loads(out) if out.strip() else None), err


def free_port(kind=socket.SOCK_STREAM):
    """A port nothing on this host's loopback uses right now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line(stderr):
    """The error line of a run's stderr, asserting it is the only one after rx's 'waiting' line."""
    lines = [l for l in stderr.splitlines() if "waiting for a sender" not in l]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("family,opts", [(4, []), (4, ["--no-zc"]), (6, []), (6, ["--no-zc"])],
                         ids=["ipv4-zc", "ipv4-copy", "ipv6-zc", "ipv6-copy"])
def test_rx_tcp_receives_and_verifies_every_byte_the_sender_reports(pair, family, opts):
    txns, rxns = pair
    dst = PAIR4[1] if family == 4 else PAIR6[1]
    port = 8100 + next(_names)
    rx = start_rx(f"-{family}", "-p", port, "tcp", ns=rxns)
    tx = tool_json(f"-{family}", "-D", dst, "-p", port, "-t", "1", *opts, "tcp", ns=txns)
    status, doc, err = finish_rx(rx)
    assert status == 0, err
    assert set(doc) == {"tool", "version", "kernel", "host", "params", "rows"}
    got, sent = doc["rows"][0], tx["rows"][0]
    assert sent["error"] is None and sent["bytes"] > 0
    assert got["bytes"] == sent["bytes"]                   # every byte the sender reports, no more
    assert got["verified"] is True and got["mismatches"] == 0 and got["first_mismatch"] is None
    assert got["method"] == "io_uring RECV" and got["note"] is None
    assert got["family"] == f"ipv{family}" and got["peer"].startswith("[" if family == 6 else "198.")
    assert got["segments"] >= got["bytes"] // 65536 and got["receives"] > 0
    assert got["seconds"] > 0 and got["mb_per_s"] > 0


def test_rx_tcp_with_recv_into_and_intervals(pair):
    txns, rxns = pair
    port = 8100 + next(_names)
    rx = start_rx("-p", port, "-i", "0.2", "--no-uring", "tcp", ns=rxns)   # both families on one socket
    tx = tool_json("-4", "-D", PAIR4[1], "-p", port, "-t", "0.5", "tcp", ns=txns)
    status, doc, err = finish_rx(rx)
    assert status == 0, err
    got = doc["rows"][0]
    assert got["method"] == "recv_into" and got["family"] == "ipv4"   # an IPv4 sender, mapped
    assert got["bytes"] == tx["rows"][0]["bytes"] and got["verified"] is True
    assert len(got["intervals"]) >= 2
    assert sum(i["bytes"] for i in got["intervals"]) == got["bytes"]
    assert doc["params"]["family"] == "any" and doc["params"]["uring"] is False


@pytest.mark.parametrize("family,size", [(4, 65435), (6, 1400)])
def test_rx_udp_every_datagram_that_arrives_is_intact(pair, family, size):
    txns, rxns = pair
    dst = PAIR4[1] if family == 4 else PAIR6[1]
    port = 8100 + next(_names)
    rx = start_rx(f"-{family}", "-p", port, "udp", ns=rxns)
    tx = tool_json(f"-{family}", "-D", dst, "-p", port, "-t", "0.5", "-s", size, "udp", ns=txns)
    status, doc, err = finish_rx(rx)           # ends after RX_UDP_IDLE_S of silence
    assert status == 0, err
    got, sent = doc["rows"][0], tx["rows"][0]
    assert 0 < got["datagrams"] <= sent["requests"]
    assert got["bytes"] == got["datagrams"] * size
    assert got["verified"] is True and got["mismatches"] == 0
    assert got["dropped"] is not None and got["datagrams"] + got["dropped"] <= sent["requests"]
    assert got["seconds"] < 1.0                 # the rate runs to the last datagram, not the idle timeout


@pytest.mark.parametrize("opts", [[], ["--no-zc"]], ids=["zc", "copy"])
def test_a_receiver_that_quits_mid_run_ends_the_sender_in_one_line(pair, opts):
    txns, rxns = pair
    port = 8100 + next(_names)
    rx = start_rx("-4", "-p", port, "-t", "0.3", "tcp", ns=rxns)
    started = time.monotonic()
    p = tool("-4", "-D", PAIR4[1], "-p", port, "-t", "5", *opts, "tcp", ns=txns)
    assert time.monotonic() - started < 4, "the sender did not notice the receiver leave"
    status, doc, err = finish_rx(rx)
    assert status == 0, err                                 # the receiver did as told
    assert p.returncode == 1
    line = one_line(p.stderr)
    assert line.startswith("sendzc: tcp: ") and "partial result above" in line
    tx = int(p.stdout.split("tx=")[1].split()[0])           # the partial count, printed first
    assert tx > 0 and doc["rows"][0]["bytes"] > 0


def test_a_sender_with_no_receiver_is_refused_in_one_line(pair):
    txns, _ = pair
    p = tool("-4", "-D", PAIR4[1], "-p", 8100 + next(_names), "-t", "1", "tcp", ns=txns)
    assert p.returncode == 1
    assert "connection refused" in one_line(p.stderr) and "sendzc.py rx" in p.stderr


# A test peer that sends the pattern with one byte flipped: what a zero-copy
# sender that rewrote its buffer too early would put on the wire.
FLIPPER = textwrap.dedent("""
    import socket, sys, time
    sys.path.insert(0, sys.argv[1])
    from sendzc import pattern
    proto, host, port, flip = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    if proto == "tcp":
        data = bytearray(pattern(4 << 20))
        data[flip] ^= 0x20
        with socket.create_connection((host, port)) as s:
            for at in range(0, len(data), 7777):      # odd writes: receive boundaries move
                s.sendall(data[at:at + 7777])
    else:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            for n in range(10):
                data = bytearray(pattern(1000))
                if n == 5:
                    data[flip] ^= 0x20
                s.send(data)
                time.sleep(0.01)
""")


@pytest.mark.parametrize("proto,flip", [("tcp", 1000003), ("udp", 17)])
def test_rx_catches_a_flipped_byte_at_its_offset(pair, proto, flip):
    txns, rxns = pair
    port = 8100 + next(_names)
    rx = start_rx("-p", port, proto, ns=rxns)
    peer = subprocess.run(["ip", "netns", "exec", txns, sys.executable, "-c", FLIPPER, HERE, proto,
                           PAIR6[1] if proto == "udp" else PAIR4[1], str(port), str(flip)],
                          capture_output=True, text=True, timeout=30)
    assert peer.returncode == 0, peer.stderr
    status, doc, err = finish_rx(rx)
    assert status == 1
    row = doc["rows"][0]
    assert row["verified"] is False and row["mismatches"] == 1
    expected = sendzc.PATTERN[flip % sendzc.PATTERN_LEN]
    assert row["first_mismatch"] == {"offset": flip, "datagram": None if proto == "tcp" else 5,
                                     "got": expected ^ 0x20, "expected": expected}
    line = one_line(err)
    where = f"stream byte {flip}" if proto == "tcp" else f"byte {flip} of datagram 5"
    assert line.startswith(f"sendzc: rx: verification failed: {where} ")
    if proto == "tcp":
        assert row["bytes"] == 4 << 20
    else:
        assert row["datagrams"] == 10


def test_rx_ctrl_c_with_a_receive_in_flight_prints_the_partial_result():
    """A sender that stalls: rx waits in a RECV; Ctrl-C ends it with what came, exit 130."""
    port = free_port()
    rx = start_rx("-4", "-p", port, "tcp")
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(sendzc.pattern(100000))
        time.sleep(0.5)                         # rx has received it all and waits for more
        rx.send_signal(signal.SIGINT)
        status, doc, err = finish_rx(rx, timeout=5)
    assert status == 130, err
    row = doc["rows"][0]
    assert row["bytes"] == 100000 and row["verified"] is True and row["interrupted"] is True
    assert "Traceback" not in err


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_rx_ctrl_c_before_any_sender(proto):
    rx = start_rx("-4", "-p", free_port(), proto)
    rx.send_signal(signal.SIGINT)
    status, doc, err = finish_rx(rx, timeout=5)
    assert status == 130 and "Traceback" not in err
    assert doc["rows"][0]["bytes"] == 0 and doc["rows"][0]["interrupted"] is True


def test_rx_refuses_a_port_in_use_in_one_line():
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        p = tool("rx", "-4", "-p", taken.getsockname()[1], "tcp")
    assert p.returncode == 1
    assert "EADDRINUSE" in one_line(p.stderr)


@pytest.mark.parametrize("args", [["-4", "-6", "tcp"], ["-p", "0", "tcp"], ["-t", "-1", "udp"], ["sctp"]])
def test_rx_usage_mistakes_are_one_line_and_status_2(args):
    p = tool("rx", *args)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.splitlines()) == 1 and "Traceback" not in p.stderr


# --- the receiver's parts, in process ----------------------------------------

def test_prep_recv_is_prep_rw_plus_msg_flags():
    sqe = sendzc.io_uring_sqe()
    sendzc.prep_recv(sqe, 3, 0x1000, 100, socket.MSG_WAITALL)
    assert (sqe.opcode, sqe.fd, sqe.addr, sqe.len) == (sendzc.IORING_OP_RECV, 3, 0x1000, 100)
    assert sqe.msg_flags == socket.MSG_WAITALL and sqe.ioprio == 0 and sqe.off == 0


def test_tcp_info_prefix_matches_the_kernel_header():
    assert ctypes.sizeof(sendzc.tcp_info) == 144
    assert sendzc.tcp_info.tcpi_rto.offset == 8
    assert sendzc.tcp_info.tcpi_bytes_received.offset == 128
    assert sendzc.tcp_info.tcpi_segs_in.offset == 140


@pytest.mark.parametrize("phase,k,bad", [(0, 1, 0), (7, 1000, 999), (25, 300000, 123457), (3, 26, 13)])
def test_the_verifier_finds_the_first_wrong_byte(phase, k, bad):
    v = sendzc.Verifier(1 << 20)
    data = bytearray(sendzc.pattern(k, phase))
    view = memoryview(data)
    assert v.matches(view[:k], phase)
    data[bad] ^= 1
    assert not v.matches(view[:k], phase)
    v.mismatch(view, k, phase, 5000, None)
    assert v.bad == 1
    assert v.first == {"offset": 5000 + bad, "datagram": None, "got": data[bad],
                       "expected": sendzc.PATTERN[(phase + bad) % 26]}


def test_uring_receiver_receives_then_sees_the_end_and_releases_everything():
    def once():
        a, b = socket.socketpair()
        with a, b, contextlib.ExitStack() as stack:
            buf = sendzc.RxBuffer(4096)
            stack.callback(buf.close)
            rx = sendzc.UringReceiver(b, buf, stack)
            a.sendall(b"hello")
            assert rx.recv() == 5 and bytes(buf.view[:5]) == b"hello"
            assert rx.recv() is None              # nothing for RX_TICK_S: the RECV stays in flight
            a.sendall(b"world")
            assert rx.recv() == 5 and bytes(buf.view[:5]) == b"world"
            assert rx.recv() is None              # in flight again: the ExitStack must cancel it
    once()                                        # warm up imports and caches
    fds, maps = open_fds(), mappings()
    once()
    assert (open_fds(), mappings()) == (fds, maps)


def test_uring_receiver_reports_the_end_of_the_stream():
    a, b = socket.socketpair()
    with b, contextlib.ExitStack() as stack:
        buf = sendzc.RxBuffer(4096)
        stack.callback(buf.close)
        rx = sendzc.UringReceiver(b, buf, stack)
        a.sendall(b"x")
        a.close()
        assert rx.recv() == 1 and rx.recv() == 0


def test_without_io_uring_tcp_falls_back_to_recv_into_and_says_so(monkeypatch):
    def refused(*args, **kw):
        raise OSError(errno.EPERM, "io_uring_setup: EPERM: Operation not permitted")
    monkeypatch.setattr(sendzc, "Ring", refused)
    a, b = socket.socketpair()
    with a, b, contextlib.ExitStack() as stack:
        buf = sendzc.RxBuffer(4096)
        stack.callback(buf.close)
        result = sendzc.RxResult("tcp", "")
        rx = sendzc.tcp_receiver(sendzc.RxConfig(), b, buf, stack, result)
        assert isinstance(rx, sendzc.SocketReceiver) and "EPERM" in result.note
        a.sendall(b"abc")
        assert rx.recv() == 3


def test_a_whole_receive_releases_every_fd_and_mapping():
    def once():
        port = free_port()
        cfg = sendzc.RxConfig(proto="tcp", family=socket.AF_INET, port=port)

        def sender():
            for _ in range(100):                      # until the receiver listens
                try:
                    with socket.create_connection(("127.0.0.1", port)) as s:
                        s.sendall(sendzc.pattern(1 << 20))
                    return
                except ConnectionRefusedError:
                    time.sleep(0.01)
        t = threading.Thread(target=sender)
        t.start()
        result, _ = sendzc.run_receiver(cfg, False, None)
        t.join()
        assert result.bytes == 1 << 20 and result.verified is True
    once()                                            # warm up imports and caches
    fds, maps = open_fds(), mappings()
    once()
    assert (open_fds(), mappings()) == (fds, maps)
