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
import math
import os
import re
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
            assert ring.sq_space_left() == 8
            ring.place(b"".join(parts))
            assert ring.sq_space_left() == 8 - batch
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


def test_submit_and_peek_wraps_the_completion_ring():
    with sendzc.Ring(4, cq_entries=8) as ring:
        sqe = sendzc.io_uring_sqe()
        sendzc.prep_nop(sqe)
        got = 0
        for _ in range(50):
            ring.place(bytes(sqe) * 3)             # 3 does not divide 8 either
            flags, res_sum = ring.submit_and_peek(3)
            assert flags == [0] * 3 and res_sum == 0
            ring.cq_advance(3)
            got += 3
        assert ring.cq_head == got == 150


@pytest.mark.parametrize("attempt", range(len(sendzc.SETUP_ATTEMPTS)))
def test_bulk_peek_reads_exactly_the_cqes_across_the_wrap(attempt):
    """With and without the SQ index array (which follows the CQEs in memory)."""
    flags = sendzc.SETUP_ATTEMPTS[attempt]
    try:
        ring = sendzc.Ring(8, cq_entries=16, attempts=(flags,))
    except OSError as e:
        pytest.skip(f"this kernel refuses setup flags {flags:#x}: {e}")
    with ring:
        sqe = sendzc.io_uring_sqe()
        sendzc.prep_nop(sqe)
        for _ in range(10):                         # 5 does not divide 16: reads straddle the end
            ring.place(bytes(sqe) * 5)
            got, res_sum = ring.submit_and_peek(5)
            assert got == [0] * 5 and res_sum == 0
            ring.cq_advance(5)
        assert len(ring._cqe_flags) == ring.cq_entries


def test_bulk_peek_agrees_with_peek_one_by_one():
    """The fast path's view (flags list, res sum) is the same CQEs as peek()'s."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, sendzc.Ring(4) as ring:
        sqe = sendzc.io_uring_sqe()
        for _ in range(3):                          # wraps the 8-entry CQ
            sendzc.prep_send_zc(sqe, a.fileno(), 8, 1, 0, sendzc.IORING_SEND_ZC_REPORT_USAGE)
            ring.place(bytes(sqe))
            ring.submit_and_wait(2)
            flags, res_sum = ring.submit_and_peek(0)
            res, flags_one_by_one = ring.peek()
            assert flags == flags_one_by_one == [sendzc.IORING_CQE_F_MORE, sendzc.IORING_CQE_F_NOTIF]
            assert res_sum == sum(res) and res[0] == -errno.EOPNOTSUPP
            ring.cq_advance(2)


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


def test_sqpoll_sends_and_reaps_without_losing_a_cqe(sink):
    if os.uname().machine != "x86_64":
        pytest.skip("--sqpoll is x86-64 only")
    for opts in ([], ["-r", "32"]):
        row = tool_json("-4", "-D", SINK4, "-t", "0.3", "--sqpoll", *opts, "udp", ns=sink)["rows"][0]
        check_row(row, 65435)
        assert "IORING_SETUP_SQPOLL" in row["setup"]


def test_flows_each_count_and_add_up(sink):
    doc = tool_json("-4", "-D", SINK4, "-t", "0.3", "-n", "2", "udp", ns=sink)
    assert len(doc["rows"]) == 2
    for row in doc["rows"]:
        check_row(row, 65435)
    total = doc["total"]
    assert total["requests"] == sum(r["requests"] for r in doc["rows"])
    assert total["bytes"] == sum(r["bytes"] for r in doc["rows"])
    assert total["notifications"] == total["requests"]


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


def test_raw_zero_copy_is_refused_in_one_line(sink):
    p = tool("-4", "-D", SINK4, "-t", "0.3", "raw", ns=sink)
    assert (p.returncode, p.stdout) == (1, "")
    assert p.stderr.splitlines() == [
        "sendzc: raw: Linux sends zero-copy only from TCP and UDP sockets (SEND_ZC on a raw socket "
        "answers EOPNOTSUPP): add --no-zc to send raw with IORING_OP_SEND"]


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
# Teaching: --trace and --probe
# =============================================================================

def test_trace_follows_two_sends_from_sqe_to_notification(sink):
    if not kernel_at_least(6, 2):
        pytest.skip("the notification's zero-copy verdict needs Linux 6.2")
    p = tool("-4", "-D", SINK4, "-t", "0.3", "--trace", "2", "udp", ns=sink)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    sqes = [l for l in lines if l.startswith("trace: SQE ")]
    cqes = [l for l in lines if l.startswith("trace: CQE ")]
    assert len(sqes) == 2 and all(" IORING_OP_SEND_ZC " in l for l in sqes)
    assert [l.split("user_data=")[1] for l in sqes] == ["1", "2"]
    results = [l for l in cqes if l.endswith("flags=F_MORE")]
    notifs = [l for l in cqes if l.endswith("flags=F_NOTIF")]
    assert len(results) == 2 and all("res=65435 (bytes)" in l for l in results)
    assert len(notifs) == 2 and all("res=0 (zero-copy)" in l for l in notifs)
    assert len(cqes) == 4
    # Head and tail around each io_uring_enter() tell the same story.
    counters = re.compile(r"sq head=(\d+) tail=(\d+) cq head=(\d+) tail=(\d+)")
    placed, enters = 2, 0
    for line in lines:
        m = counters.search(line)
        if line.startswith("trace: io_uring_enter("):
            sq_head, sq_tail, cq_head, cq_tail = map(int, m.groups())
            assert sq_tail - sq_head == placed         # placed, not yet consumed by the kernel
            assert cq_tail == cq_head                  # everything earlier was reaped
            placed, enters = 0, enters + 1
        elif line.startswith("trace:   returned; after:"):
            sq_head, sq_tail, cq_head, cq_tail = map(int, m.groups())
            ready = int(line.split("(")[1].split()[0])
            assert sq_head == sq_tail                  # every SQE consumed
            assert cq_tail - cq_head == ready > 0      # these CQEs wait to be read
    assert enters >= 1
    # Each kind of line is explained once, before its first use.
    assert sum(l.startswith("#   F_MORE:") for l in lines) == 1
    assert lines.index(next(l for l in lines if l.startswith("#   F_NOTIF:"))) < lines.index(notifs[0])
    seed_line = next(l for l in lines if l.startswith("tx="))
    assert int(seed_line.split("tx=")[1].split()[0]) > 2        # the run went on


def test_probe_says_send_zc_is_here():
    p = tool("--probe")
    if not kernel_at_least(6, 0):
        assert p.returncode == 1 and "IORING_OP_SEND_ZC" in p.stderr
        return
    assert p.returncode == 0, p.stderr
    assert "SEND_ZC yes" in p.stdout
    doc = json.loads(tool("--probe", "--json").stdout)
    assert doc["probe"]["opcodes"]["IORING_OP_SEND_ZC"] is True and doc["probe"]["missing"] == []


@contextlib.contextmanager
def sysctl(path, value):
    """Set a sysctl for the test; always put the old value back."""
    full = "/proc/sys/" + path.replace(".", "/")
    if not IS_ROOT or not os.path.exists(full):
        pytest.skip(f"needs root and {full}")
    with open(full) as f:
        old = f.read()
    try:
        with open(full, "w") as f:
            f.write(str(value))
        yield
    finally:
        with open(full, "w") as f:
            f.write(old)


def test_probe_names_io_uring_disabled_as_the_cause():
    with sysctl("kernel.io_uring_disabled", 2):
        p = tool("--probe")
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        "sendzc: missing: io_uring_setup (io_uring is disabled on this host "
        "(kernel.io_uring_disabled=2): `sysctl -w kernel.io_uring_disabled=0` as root)"]


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

BENCH_MODES = [("send_syscall", 1), ("msg_zerocopy", 1), ("msg_zerocopy_poll", 1), ("send", 1),
               ("send", 8), ("send_zc", 1), ("send_zc", 8), ("send_zc_fixed", 1), ("send_zc_fixed", 8),
               ("send_zc_fixed_flush", 1), ("send_zc_fixed_flush", 8)]
ZC_MODES = ("msg_zerocopy", "msg_zerocopy_poll", "send_zc", "send_zc_fixed", "send_zc_fixed_flush")
INTERVAL_LINE = re.compile(r"^\[\s*[\d.]+-\s*[\d.]+ s\]")


def check_bench_row(r, size):
    """A finished row into the sink: whole sends, every completion seen, nothing copied."""
    assert r["bytes"] > 0 and r["error"] is None and not r["interrupted"], r
    assert r["size"] == size and r["bytes"] == r["requests"] * size
    assert r["undrained"] == 0
    if r["mode"] in ZC_MODES:
        assert r["notifications"] == r["requests"]           # every send's completion seen
        assert r["zc_copied"] == 0                           # the sink really is zero-copy
    else:
        assert r["notifications"] == 0 and r["zc_copied"] is None


def bench_json(*args, ns=None):
    """`sendzc.py bench --json ARGS` ("bench" must come first); its document, or fail with stderr."""
    p = tool("bench", "--json", *args, ns=ns)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def syscall_run(zerocopy, **kw):
    """One in-process send(2) run to a UDP socket on loopback that nobody reads."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        cfg = sendzc.SendConfig(proto="udp", addr="127.0.0.1", port=rx.getsockname()[1],
                                size=1400, seconds=0.2, **kw)
        with contextlib.ExitStack() as stack:
            sock = sendzc.open_tx_socket("udp", socket.AF_INET, cfg.addr, cfg.port)
            stack.callback(sock.close)
            payload = sendzc.Payload(cfg.size)
            stack.callback(payload.close)
            sender = sendzc.SyscallSender(cfg, sock, payload, zerocopy)
            return sender.run(), sender.completions


def test_msg_zerocopy_sees_every_completion_before_the_run_ends():
    result, done = syscall_run(zerocopy=True)
    assert result.requests > 0 and result.error is None
    assert done.sent == done.completed == result.notifications == result.requests
    assert result.undrained == 0 and done.out_of_order == 0
    assert done.ranges >= 1                      # read off the error queue, range by range
    assert done.next_lo == done.sent             # ... in order: 0..sent-1, no gap, no overlap
    assert result.zc_copied == result.notifications      # loopback always copies


@pytest.mark.parametrize("zerocopy", [False, True])
def test_a_syscall_run_releases_every_fd_and_mapping(zerocopy):
    syscall_run(zerocopy)                         # warm up imports and caches
    fds, maps = open_fds(), mappings()
    result, _ = syscall_run(zerocopy)
    assert result.requests > 0 and result.error is None
    assert (open_fds(), mappings()) == (fds, maps)


def test_zerocopy_ranges_count_across_the_u32_wrap():
    done = sendzc.ZerocopyCompletions()
    done.sent = 10
    done.next_lo = 2**32 - 2
    assert done.add(2**32 - 2, 1, 0) == 4        # 4294967294, 4294967295, 0, 1
    assert done.add(2, 3, sendzc.SO_EE_CODE_ZEROCOPY_COPIED) == 2
    assert (done.completed, done.copied, done.ranges, done.out_of_order) == (6, 2, 2, 0)
    with pytest.raises(AssertionError):
        done.add(4, 9, 0)                        # 12 completions for 10 sends: accounting broke


def result(mode, size, mb_per_s):
    r = sendzc.Result(mode, "udp", size, 8)
    r.bytes, r.seconds = int(mb_per_s * sendzc.MIB), 1.0
    return r


def test_crossover_is_the_smallest_size_from_which_zero_copy_keeps_winning():
    rows = [result("send", 1400, 600), result("send_zc", 1400, 500),
            result("send", 4096, 1500), result("send_zc_fixed", 4096, 1600),   # a fluke ...
            result("send", 16384, 6000), result("send_zc", 16384, 5000),       # ... undone here
            result("send", 65435, 15000), result("send_zc_fixed", 65435, 30000),
            result("send_syscall", 1400, 500), result("msg_zerocopy", 1400, 400),
            result("send_syscall", 65435, 9000), result("msg_zerocopy", 65435, 8000)]
    assert sendzc.crossover(rows) == {"io_uring": 65435, "msg_zerocopy": None}
    # A win inside the noise (1%) is no win: it must be CROSSOVER_MARGIN or more.
    rows = [result("send_syscall", 4096, 2000), result("msg_zerocopy", 4096, 2020),
            result("send_syscall", 65435, 9000), result("msg_zerocopy", 65435, 12000)]
    assert sendzc.crossover(rows)["msg_zerocopy"] == 65435


def test_speedup_is_against_the_poll_per_send_msg_zerocopy_row_of_the_same_size():
    rows = [result("msg_zerocopy_poll", 1400, 400), result("send_zc", 1400, 600),
            result("msg_zerocopy", 65435, 1200), result("msg_zerocopy_poll", 65435, 1000),
            result("send_zc", 65435, 2440)]
    sendzc.set_speedups(rows)
    assert [r.speedup for r in rows] == [1.0, 1.5, 1.2, 1.0, 2.44]


def test_bench_without_root_says_so_and_points_at_d():
    # Root without capabilities cannot unshare(CLONE_NEWNET), just as a user cannot.
    setpriv = shutil.which("setpriv")
    if IS_ROOT and setpriv is None:
        pytest.skip("needs setpriv (util-linux) to drop root's capabilities")
    prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"] if IS_ROOT else []
    p = subprocess.run(prefix + [sys.executable, TOOL, "bench", "-t", "0.1"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and p.stdout == ""
    assert len(p.stderr.splitlines()) == 1, p.stderr
    assert "needs root" in p.stderr and "bench -D ADDR" in p.stderr


def host_net():
    """The host's named network namespaces and its links, by name.

    Other copies of this suite (other worktrees) may be running on this
    machine, making their own szt<pid>-<n> namespaces: those are left out.
    """
    mine = f"szt{os.getpid()}-"
    ns = {line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()}
    ns = {n for n in ns if not re.match(r"szt\d+-", n) or n.startswith(mine)}
    links = {line.split(":")[1].strip().split("@")[0]
             for line in ip("-o", "link", "show").stdout.splitlines()}
    return ns, links


def assert_host_unchanged(before):
    # Retried for a moment: anything else on this machine that briefly adds a
    # link is gone again; a namespace or device bench left behind is not.
    for _ in range(10):
        after = host_net()
        if after == before:
            return
        time.sleep(0.3)
    assert after == before


@pytest.fixture(scope="module")
def bench_doc():
    """One default-shaped bench run, -t 0.5, shared by the tests that read its JSON."""
    if not IS_ROOT or not HAVE_IP:
        pytest.skip("bench's private sink needs root and iproute2")
    before = host_net()
    p = tool("bench", "-t", "0.5", "--json")
    if p.returncode == 1 and "no ifb device" in p.stderr:
        pytest.skip(p.stderr.strip())
    assert p.returncode == 0, p.stderr
    assert_host_unchanged(before)
    return json.loads(p.stdout)


def test_bench_json_has_every_row_and_the_baseline_is_one(bench_doc):
    rows = bench_doc["rows"]
    assert [(r["mode"], r["batch"]) for r in rows] == BENCH_MODES
    for r in rows:
        check_bench_row(r, 65435)
    baseline = [r for r in rows if r["mode"] == "msg_zerocopy_poll"]
    assert baseline[0]["speedup"] == baseline[0]["sys_speedup"] == 1.00
    assert all(r["speedup"] > 0 for r in rows)
    assert bench_doc["params"]["sink"]["qdisc"] == "noqueue"
    assert bench_doc["params"]["sink"]["mtu"] == 65535


def readme_table(heading):
    """{field: (type, present)} from the README table under heading."""
    with open(os.path.join(HERE, "README.md")) as f:
        lines = f.read().splitlines()
    start = lines.index(heading)
    fields = {}
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        m = re.match(r"\| `(\w+)` \| ([^|]+) \| ([^|]+) \|", line)
        if m:
            fields[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    assert fields, f"no field table under {heading!r} in README.md"
    return fields


JSON_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "null": type(None),
              "object": dict, "list": list}


def check_against_readme(obj, heading, options=()):
    """Every field obj has is documented, with its type; every field always present is there."""
    fields = readme_table(heading)
    for name, value in obj.items():
        assert name in fields, f"{name} is not documented under {heading!r}"
        kinds = tuple(JSON_TYPES[t.strip()] for t in fields[name][0].split(" or "))
        # (bool is an int to isinstance: a true/false where a number belongs is caught too)
        assert isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)), (name, value)
    for name, (_, present) in fields.items():
        if present == "always" or any(o in present for o in options):
            assert name in obj, f"{name} is documented as present but missing"


def test_bench_json_matches_the_fields_readme_documents(bench_doc):
    check_against_readme(bench_doc, "### The JSON document")
    for row in bench_doc["rows"]:
        check_against_readme(row, "### A JSON row")


def test_sender_json_matches_the_fields_readme_documents():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        doc = tool_json("-D", "127.0.0.1", "-p", rx.getsockname()[1], "-t", "0.5", "-i", "0.2",
                        "-s", "1400", "udp")
    check_against_readme(doc, "### The JSON document")
    assert len(doc["rows"]) == 1                              # a single send is one row
    check_against_readme(doc["rows"][0], "### A JSON row", options=["-i"])
    assert len(doc["rows"][0]["intervals"]) == math.ceil(0.5 / 0.2)


def test_bench_interval_lines_are_ceil_t_over_i_per_row():
    if not IS_ROOT or not HAVE_IP:
        pytest.skip("bench's private sink needs root and iproute2")
    t, i = 0.3, 0.1
    p = tool("bench", "-t", t, "-i", i, "--batches", "8")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    heads = [n for n, line in enumerate(lines) if line.startswith("-- ")]
    assert len(heads) == 7                                   # 3 baselines + 4 io_uring modes
    for n in heads:                                          # each row's lines follow its heading
        block = itertools.takewhile(lambda line: INTERVAL_LINE.match(line), lines[n + 1:])
        assert len(list(block)) == math.ceil(t / i)
    assert p.stderr == ""                                    # no progress line when piped


def test_bench_d_runs_the_table_against_a_receiver_without_a_private_sink(sink):
    """-D: the same rows, sent from here (the sink namespace plays the receiver's network)."""
    doc = bench_json("-D", SINK4, "-t", "0.2", "-i", "0.1", "--sizes", "1400,65435",
                    "--batches", "8", ns=sink)
    assert doc["params"]["sink"] is None and doc["params"]["addr"] == SINK4
    rows = doc["rows"]
    assert [(r["size"], r["mode"]) for r in rows] == [
        (size, mode) for size in (1400, 65435)
        for mode in ("send_syscall", "msg_zerocopy", "msg_zerocopy_poll", "send", "send_zc",
                     "send_zc_fixed", "send_zc_fixed_flush")]
    for r in rows:
        check_bench_row(r, r["size"])
        assert len(r["intervals"]) == math.ceil(0.2 / 0.1)
    assert set(doc["crossover"]) == {"io_uring", "msg_zerocopy"}
    assert all(v in (None, 1400, 65435) for v in doc["crossover"].values())


def test_bench_in_process_comes_home_and_leaks_nothing(capsys):
    """bench_main() leaves its private namespace for ours, and closes every fd and mapping."""
    if not IS_ROOT or not HAVE_IP:
        pytest.skip("bench's private sink needs root and iproute2")
    home = os.readlink("/proc/self/ns/net")
    args = ["-t", "0.1", "--batches", "8", "--json"]
    warm = sendzc.bench_main(args)                  # warm up imports and caches
    first = capsys.readouterr()
    if warm != 0:
        pytest.skip(first.err.strip())
    fds, maps = open_fds(), mappings()
    assert sendzc.bench_main(args) == 0
    assert os.readlink("/proc/self/ns/net") == home
    assert (open_fds(), mappings()) == (fds, maps)
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["rows"]) == 7 and all(r["bytes"] > 0 for r in doc["rows"])


@pytest.mark.parametrize("how", ["error", "sigint", "sigkill"])
def test_bench_leaves_the_host_as_it_found_it(how):
    """A private namespace dies with the process: whatever ends bench, nothing is left."""
    if not IS_ROOT or not HAVE_IP:
        pytest.skip("bench's private sink needs root and iproute2")
    before = host_net()
    if how == "error":
        # tc refuses the qdisc after the namespace and the ifb device exist.
        p = tool("bench", "-t", "0.2", "--qdisc", "no-such-qdisc")
        if "no ifb device" in p.stderr:
            pytest.skip(p.stderr.strip())
        assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
        assert "no-such-qdisc" in p.stderr
    else:
        proc = subprocess.Popen([sys.executable, TOOL, "bench", "-t", "0.5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            header = proc.stdout.readline()            # printed once the sink is up
            if not header:
                pytest.skip(proc.communicate()[1].strip())
            time.sleep(1.2)                            # two rows done, the third under way
            proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        if how == "sigint":
            assert proc.returncode == 130, err
            assert err.splitlines() == [RUNTIME_LINES["Ctrl-C"]]
            table = [line for line in out.splitlines() if re.match(r"(send|io_uring|MSG_ZEROCOPY)", line)]
            assert table[0].startswith("send(2) ") and len(table) >= 2    # the rows so far
            assert "(interrupted)" in table[-1]
        else:
            assert proc.returncode == -signal.SIGKILL
    assert_host_unchanged(before)


def test_bench_sweep_runs_the_zero_copy_path_at_every_batch():
    if not IS_ROOT or not HAVE_IP:
        pytest.skip("needs root and iproute2 for the private sink")
    p = tool("bench", "--sweep", "--json", "-t", "0.2", "--sizes", "1400", "--batches", "1,8")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["params"]["sweep"] is True
    modes = ["send_zc_fixed"] + (["send_zc_fixed_sqpoll"] if os.uname().machine == "x86_64" else [])
    assert [(r["mode"], r["batch"]) for r in doc["rows"]] == [(m, b) for m in modes for b in (1, 8)]
    for row in doc["rows"]:
        assert row["bytes"] == row["requests"] * 1400 > 0
        assert row["notifications"] == row["requests"] and row["zc_copied"] == 0
    text = tool("bench", "--sweep", "-t", "0.2", "--sizes", "1400", "--batches", "1,8")
    assert text.returncode == 0, text.stderr
    assert "knee, io_uring SEND_ZC fixed buf: batch " in text.stdout


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
    if "waiting for" not in line:
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


@pytest.mark.parametrize("opts", [["--sqpoll"], ["-r", "32"]], ids=["sqpoll", "batch32"])
def test_rx_verifies_the_stream_whatever_the_sender_batches(pair, opts):
    """A TCP stream stays in order however the sender keeps requests in flight."""
    if "--sqpoll" in opts and os.uname().machine != "x86_64":
        pytest.skip("--sqpoll is x86-64 only")
    txns, rxns = pair
    port = 8100 + next(_names)
    rx = start_rx("-4", "-p", port, "tcp", ns=rxns)
    tx = tool_json("-4", "-D", PAIR4[1], "-p", port, "-t", "1", *opts, "tcp", ns=txns)
    status, doc, err = finish_rx(rx)
    assert status == 0, err
    assert doc["rows"][0]["verified"] is True
    assert doc["rows"][0]["bytes"] == tx["rows"][0]["bytes"] > 0


def test_rx_takes_as_many_tcp_flows_as_the_sender_sends(pair):
    txns, rxns = pair
    port = 8100 + next(_names)
    rx = start_rx("-4", "-p", port, "-n", "2", "tcp", ns=rxns)
    tx = tool_json("-4", "-D", PAIR4[1], "-p", port, "-t", "0.5", "-n", "2", "tcp", ns=txns)
    status, doc, err = finish_rx(rx)
    assert status == 0, err
    sent = sorted(r["bytes"] for r in tx["rows"])
    got = sorted(r["bytes"] for r in doc["rows"])
    assert got == sent and min(got) > 0                    # flow by flow, every byte
    assert doc["total"]["bytes"] == tx["total"]["bytes"] == sum(sent)
    assert all(r["verified"] for r in doc["rows"]) and doc["total"]["verified"] is True
    assert doc["params"]["flows"] == 2


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
    # One line, whichever the kernel said first: ECONNRESET, EPIPE or a short send.
    assert one_line(p.stderr) == (
        f"sendzc: tcp: the connection to {PAIR4[1]}:{port} was closed or reset mid-run (the "
        f"receiver quit?): the result above is partial; start the receiver again "
        f"(`python3 sendzc.py rx -p {port} tcp`) and rerun")
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
    assert one_line(err) == RUNTIME_LINES["Ctrl-C"]


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_rx_ctrl_c_before_any_sender(proto):
    rx = start_rx("-4", "-p", free_port(), proto)
    rx.send_signal(signal.SIGINT)
    status, doc, err = finish_rx(rx, timeout=5)
    assert status == 130
    assert one_line(err) == RUNTIME_LINES["Ctrl-C"]
    assert doc["rows"][0]["bytes"] == 0 and doc["rows"][0]["interrupted"] is True


def test_rx_refuses_a_port_in_use_in_one_line():
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        p = tool("rx", "-4", "-p", taken.getsockname()[1], "tcp")
    assert p.returncode == 1
    assert "EADDRINUSE" in one_line(p.stderr)


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


# =============================================================================
# Every failure in one line (README: "When it fails")
#
# Each case ends in exactly one line on stderr, `sendzc: <cause>: <fix>`, no
# traceback, and its exit status: 2 for a usage mistake, 1 for a refusal or a
# fault, 130 for Ctrl-C. One test per row of the README's table.
# =============================================================================

def only_line(p):
    """The one line a failed run printed on stderr (no traceback, nothing else)."""
    assert "Traceback" not in p.stderr, p.stderr
    lines = [l for l in p.stderr.splitlines() if "waiting for a sender" not in l]
    assert len(lines) == 1, p.stderr
    return lines[0]


# (what the user typed, after `sendzc.py`) -> the exact line. Nothing is sent:
# the command line is checked before any socket or ring exists.
USAGE_MISTAKES = {
    "bad address": (
        ["-D", "10.0.0.300", "udp"],
        "sendzc: -D 10.0.0.300: not an IPv4 or IPv6 address: give one in numbers, "
        "such as 192.0.2.1 or 2001:db8::1"),
    "-4 with an IPv6 address": (
        ["-4", "-D", "2001:db8::1", "udp"],
        "sendzc: -D 2001:db8::1 is an IPv6 address but -4 was given: drop -4 (the address says which)"),
    "-4 and -6 together": (
        ["-4", "-6", "-D", "192.0.2.1", "udp"],
        "sendzc: -4 and -6 together: pass one of them, or neither"),
    "unknown protocol": (
        ["-D", "192.0.2.1", "sctp"],
        "sendzc: unknown protocol 'sctp': say udp, tcp or raw"),
    "no protocol": (
        ["-D", "192.0.2.1"],
        "sendzc: no protocol given: end the command with udp, tcp or raw, "
        "e.g. `python3 sendzc.py -D 192.0.2.1 udp`"),
    "-s above the UDP/IPv4 maximum": (
        ["-D", "192.0.2.1", "-s", "65508", "udp"],
        "sendzc: -s 65508: payload exceeds max (65507) for udp over IPv4: give -s 65507 or less"),
    "-s above the raw/IPv6 maximum": (
        ["-D", "2001:db8::1", "-s", "65536", "raw"],
        "sendzc: -s 65536: payload exceeds max (65535) for raw over IPv6: give -s 65535 or less"),
    "-s 0": (
        ["-D", "192.0.2.1", "-s", "0", "udp"],
        "sendzc: -s 0: too small: give a whole number of 1 or more"),
    "-r 0": (
        ["-D", "192.0.2.1", "-r", "0", "udp"],
        "sendzc: -r 0: too small: give a whole number of 1 or more"),
    "-r larger than the ring": (
        ["-D", "192.0.2.1", "-r", "1024", "udp"],
        "sendzc: -r 1024: more requests per batch than the ring has entries (512): "
        "raise --entries or lower -r"),
    "-t negative": (
        ["-D", "192.0.2.1", "-t", "-1", "udp"],
        "sendzc: -t -1: not a positive number of seconds: give seconds above 0, e.g. 0.5"),
    "-t not a number": (
        ["-D", "192.0.2.1", "-t", "soon", "udp"],
        "sendzc: -t soon: not a number: give seconds above 0, e.g. 0.5"),
    "port out of range": (
        ["-D", "192.0.2.1", "-p", "65536", "udp"],
        "sendzc: -p 65536: no such port: give one from 1 to 65535"),
    "negative port": (
        ["-D", "192.0.2.1", "-p", "-1", "udp"],
        "sendzc: -p -1: no such port: give one from 1 to 65535"),
    "--trace negative": (
        ["-D", "192.0.2.1", "--trace", "-2", "udp"],
        "sendzc: --trace -2: too small: give a whole number of 0 or more"),
    "an option without its value": (
        ["-D", "192.0.2.1", "udp", "-t"],
        "sendzc: -t needs a value: put it right after -t (see `python3 sendzc.py --help`)"),
    "-f with --no-zc": (
        ["-D", "192.0.2.1", "-f", "--no-zc", "udp"],
        "sendzc: -f with --no-zc: -f waits for zero-copy notifications, and --no-zc sends "
        "without them: drop one of the two"),
    "no destination": (
        ["udp"],
        "sendzc: no destination: pass -D ADDR (a host running `sendzc.py rx`), "
        "or run `sendzc.py bench` for the private sink"),
    "rx: -t negative": (
        ["rx", "-t", "-1", "udp"],
        "sendzc: -t -1: not a positive number of seconds: give seconds above 0, e.g. 0.5"),
    "rx: -4 and -6 together": (
        ["rx", "-4", "-6", "tcp"],
        "sendzc: -4 and -6 together: pass one of them, or neither"),
    "rx: port 0": (
        ["rx", "-p", "0", "tcp"],
        "sendzc: -p 0: no such port: give one from 1 to 65535"),
    "rx: unknown protocol": (
        ["rx", "sctp"],
        "sendzc: unknown protocol 'sctp': say udp or tcp"),
    "rx: no protocol": (
        ["rx", "-4"],
        "sendzc: no protocol given: end the command with udp or tcp, e.g. `python3 sendzc.py rx -4 udp`"),
    "-i with -n": (
        ["-D", "192.0.2.1", "-n", "2", "-i", "1", "udp"],
        "sendzc: -i with -n 2: interval lines are per run; drop one of the two"),
    "rx: -n with udp": (
        ["rx", "-n", "2", "udp"],
        "sendzc: -n 2 with udp: every UDP flow arrives on the one socket; -n is for tcp, "
        "one connection a flow"),
    "bench: -t negative": (
        ["bench", "-t", "-0.5"],
        "sendzc: -t -0.5: not a positive number of seconds: give seconds above 0, e.g. 0.5"),
    "bench: -t 0": (
        ["bench", "-t", "0"],
        "sendzc: -t 0: not a positive number of seconds: give seconds above 0, e.g. 0.5"),
    "bench: tcp into the sink": (
        ["bench", "tcp"],
        "sendzc: tcp needs a peer that acknowledges, and the private sink drops everything: "
        "pass -D ADDR of a host running `sendzc.py rx tcp`"),
    "bench: a size above the maximum": (
        ["bench", "--sizes", "1400,70000"],
        "sendzc: --sizes 70000: payload exceeds max (65507) for udp over IPv4: "
        "keep every size at 65507 or less"),
    "bench: a size that is not a number": (
        ["bench", "--sizes", "1400,x"],
        "sendzc: --sizes 1400,x: 'x' is not a whole number of 1 or more: "
        "give such numbers, separated by commas"),
    "bench: a batch larger than the ring": (
        ["bench", "--batches", "1,1024"],
        "sendzc: --batches 1024: more requests per batch than the ring has entries (512): "
        "keep every batch at 512 or less"),
    "bench: --qdisc with -D": (
        ["bench", "-D", "192.0.2.1", "--qdisc", "noqueue"],
        "sendzc: --qdisc with -D: --qdisc sets up the private sink, and -D sends over this "
        "host's own path and its qdisc: drop one of the two"),
}


@pytest.mark.parametrize("case", list(USAGE_MISTAKES))
def test_a_usage_mistake_is_one_line_and_status_2(case):
    args, line = USAGE_MISTAKES[case]
    p = tool(*args)
    assert (p.returncode, p.stdout) == (2, "")
    assert only_line(p) == line


# The runtime lines with nothing in them that changes from run to run (no
# port, no kernel release), by case; the tests below assert each exactly.
RUNTIME_LINES = {
    "io_uring disabled by sysctl":
        "sendzc: io_uring is disabled on this host (kernel.io_uring_disabled=2): "
        "`sysctl -w kernel.io_uring_disabled=0` as root",
    "io_uring limited to root, run as a user":
        "sendzc: io_uring is limited to root and the io_uring_group (kernel.io_uring_disabled=1): "
        "run as root, join the group kernel.io_uring_group names, or "
        "`sysctl -w kernel.io_uring_disabled=0` as root",
    "seccomp EPERM":
        "sendzc: io_uring_setup: EPERM: a seccomp filter on this process refuses io_uring (as the "
        "default profiles of container runtimes do): allow io_uring_setup, io_uring_enter and "
        "io_uring_register in its profile, or run outside the container",
    "seccomp ENOSYS":
        "sendzc: io_uring_setup: ENOSYS: a seccomp filter on this process hides io_uring (as the "
        "default profiles of container runtimes do): allow io_uring_setup, io_uring_enter and "
        "io_uring_register in its profile, or run outside the container",
    "private sink, not root":
        "sendzc: bench: the private sink (a network namespace with an ifb device) needs root: run "
        "`sudo python3 sendzc.py bench`, or measure against a receiver instead, with no private sink "
        "and no root: `python3 sendzc.py bench -D ADDR` (`sendzc.py rx udp` running at ADDR)",
    "raw without CAP_NET_RAW":
        "sendzc: raw: a raw socket needs CAP_NET_RAW: run as root, "
        "`setcap cap_net_raw+ep` on the python binary, or send udp",
    "locked memory: the ring":
        "sendzc: io_uring_setup: ENOMEM: the rings need more locked memory than RLIMIT_MEMLOCK "
        "leaves (`ulimit -l`: 16 KiB): raise it, lower --entries, or run as root",
    "locked memory: the registered buffer":
        "sendzc: io_uring_register: ENOMEM: pinning the 64 KiB payload buffer passes the "
        "locked-memory limit (RLIMIT_MEMLOCK, `ulimit -l`: 16 KiB, which the ring counts against "
        "too): raise it, or run as root",
    "locked memory: zero-copy sends":
        "sendzc: send: ENOMEM: zero-copy pins the pages it sends, and those in flight pass the "
        "locked-memory limit (RLIMIT_MEMLOCK, `ulimit -l`: 16 KiB): raise it, run as root, "
        "or add --no-zc",
    "ENOBUFS, optmem_max too small for one completion":
        "sendzc: send(MSG_ZEROCOPY): ENOBUFS with no completion outstanding: net.core.optmem_max = 1 "
        "cannot hold one send's completion: raise it (e.g. `sysctl -w net.core.optmem_max=131072`)",
    "Ctrl-C":
        "sendzc: interrupted (Ctrl-C): the result above is partial",
}


def test_every_line_the_tests_pin_down_is_in_the_readme_table():
    with open(os.path.join(HERE, "README.md")) as f:
        readme = f.read()
    lines = {**{case: line for case, (_, line) in USAGE_MISTAKES.items()}, **RUNTIME_LINES}
    for case, line in lines.items():
        # (a line with backticks in it sits between double backticks in Markdown)
        assert f"`` {line} ``" in readme, f"README lacks the line for {case!r}"


# --- children that cannot do what root can ------------------------------------

def world_runnable(path):
    """Can any user run this file: every directory on its path searchable, the file executable?"""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    dirs = [os.sep.join(parts[:i]) or os.sep for i in range(1, len(parts))]
    return all(os.stat(d).st_mode & 0o001 for d in dirs) and bool(os.stat(path).st_mode & 0o001)


# The test's interpreter may live under /root (pyenv), which nobody may enter.
NOBODY_PYTHON = next((p for p in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3")
                      if os.path.exists(p) and world_runnable(p)), None)


@pytest.fixture(scope="module")
def nobody():
    """Run the tool as the user nobody: (run(*args, memlock=None), its copy of sendzc.py).

    The tool is copied to a directory every user may read (this worktree may
    sit where nobody may not). memlock lowers RLIMIT_MEMLOCK in that child
    alone, while it is still root, so this process's own limit never changes.
    """
    if not IS_ROOT:
        pytest.skip("needs root to become nobody")
    if NOBODY_PYTHON is None:
        pytest.skip("no Python interpreter that the user nobody may run")
    import pwd
    import tempfile
    user = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        copy = os.path.join(d, "sendzc.py")
        shutil.copy(TOOL, copy)
        os.chmod(copy, 0o644)

        def run(*args, memlock=None, timeout=30):
            def become_nobody():
                if memlock is not None:
                    import resource
                    resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock, memlock))
                os.setgroups([])
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)
            return subprocess.run([NOBODY_PYTHON, "-I", copy, *map(str, args)], cwd=d,
                                  capture_output=True, text=True, timeout=timeout,
                                  preexec_fn=become_nobody, env={"PATH": "/usr/bin:/bin"})
        yield run


# Installs a seccomp filter that answers io_uring_setup/enter/register with an
# errno, as container runtimes' default profiles do, then execs the tool: the
# filter survives exec (PR_SET_NO_NEW_PRIVS makes that allowed without root).
SECCOMP_EXEC = textwrap.dedent("""
    import ctypes, errno, os, platform, sys
    libc = ctypes.CDLL(None, use_errno=True)

    class sock_filter(ctypes.Structure):          # <linux/filter.h>
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class sock_fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(sock_filter))]

    BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06     # BPF_LD|BPF_W|BPF_ABS, ...
    SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
    AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[platform.machine()]
    PR_SET_SECCOMP, SECCOMP_MODE_FILTER, PR_SET_NO_NEW_PRIVS = 22, 2, 38
    err = getattr(errno, sys.argv[1])
    program = [
        (BPF_LD_W_ABS, 0, 0, 4),                   # seccomp_data.arch
        (BPF_JEQ_K, 1, 0, AUDIT_ARCH),             # ours: go on; another ABI's numbers differ:
        (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),   # refuse it outright
        (BPF_LD_W_ABS, 0, 0, 0),                   # seccomp_data.nr
        (BPF_JEQ_K, 3, 0, 425),                    # io_uring_setup
        (BPF_JEQ_K, 2, 0, 426),                    # io_uring_enter
        (BPF_JEQ_K, 1, 0, 427),                    # io_uring_register
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | err),
    ]
    filters = (sock_filter * len(program))(*[sock_filter(*i) for i in program])
    prog = sock_fprog(len(program), filters)
    ulong = ctypes.c_ulong
    if libc.prctl(PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:
        sys.exit(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog), ulong(0), ulong(0)) != 0:
        sys.exit(f"prctl(PR_SET_SECCOMP): {os.strerror(ctypes.get_errno())}")
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
""")


def tool_under_seccomp(err_name, *args):
    if os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip("the filter knows the io_uring syscall numbers of x86_64 and aarch64 only")
    return subprocess.run([sys.executable, "-c", SECCOMP_EXEC, err_name, TOOL, *map(str, args)],
                          capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def udp_sink_socket():
    """A UDP socket on loopback that nobody reads: a destination that never refuses."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def main_in_process(capsys, *args):
    """sendzc.main(args) in this process: (status, its stdout, its stderr lines)."""
    capsys.readouterr()
    status = sendzc.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err.splitlines()


# --- the system refuses -----------------------------------------------------------

IO_URING_DISABLED_LINE = RUNTIME_LINES["io_uring disabled by sysctl"]


def test_io_uring_disabled_by_sysctl():
    with udp_sink_socket() as port, sysctl("kernel.io_uring_disabled", 2):
        p = tool("-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == IO_URING_DISABLED_LINE


def test_io_uring_disabled_in_process_leaks_nothing(capsys):
    with udp_sink_socket() as port, sysctl("kernel.io_uring_disabled", 2):
        args = ("-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp")
        main_in_process(capsys, *args)                      # warm up imports and caches
        fds, maps = open_fds(), mappings()
        status, out, err = main_in_process(capsys, *args)
        assert (open_fds(), mappings()) == (fds, maps)
    assert (status, out, err) == (1, "", [IO_URING_DISABLED_LINE])


def test_io_uring_limited_to_root_refuses_nobody(nobody):
    with udp_sink_socket() as port, sysctl("kernel.io_uring_disabled", 1):
        p = nobody("-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == RUNTIME_LINES["io_uring limited to root, run as a user"]


@pytest.mark.parametrize("err", ["EPERM", "ENOSYS"])
def test_io_uring_blocked_by_seccomp(err):
    with udp_sink_socket() as port:
        p = tool_under_seccomp(err, "-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == RUNTIME_LINES[f"seccomp {err}"]


def test_the_receiver_needs_no_io_uring_even_under_seccomp():
    """rx under the same filter falls back to recv_into and says so; it does not fail."""
    port = free_port()
    rx = subprocess.Popen([sys.executable, "-c", SECCOMP_EXEC, "EPERM", TOOL, "rx", "--json", "-4",
                           "-p", str(port), "tcp"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "waiting for a sender" in rx.stderr.readline()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(sendzc.pattern(100000))
    status, doc, err = finish_rx(rx)
    assert status == 0, err
    row = doc["rows"][0]
    assert row["method"] == "recv_into" and row["bytes"] == 100000 and row["verified"] is True
    assert row["note"].startswith("io_uring refused (io_uring_setup: EPERM")


# The one fake in this file: no kernel this suite runs on lacks SEND_ZC, so a
# probe result without it is made by hand and fed to the check that reads it.
def probe_without(*ops):
    return sendzc.Probe(last_op=sendzc.IORING_OP_SENDMSG_ZC,
                        supported=frozenset(range(sendzc.IORING_OP_SENDMSG_ZC + 1)) - set(ops))


@pytest.mark.parametrize("mode,op,fix", [
    ("send_zc_fixed", "IORING_OP_SEND_ZC (Linux 6.0+)",
     "use --no-zc (IORING_OP_SEND, which copies), or a newer kernel"),
    ("sendmsg_zc", "IORING_OP_SENDMSG_ZC (Linux 6.1+)",
     "drop --sendmsg (IORING_OP_SEND_ZC), or use a newer kernel"),
])
def test_an_opcode_missing_on_an_older_kernel(mode, op, fix):
    probe = probe_without(sendzc.IORING_OP_SEND_ZC, sendzc.IORING_OP_SENDMSG_ZC)   # a 5.19 kernel
    with pytest.raises(sendzc.Fatal) as e:
        sendzc.check_opcode(probe, mode)
    assert e.value.status == 1
    assert f"sendzc: {e.value}" == f"sendzc: this kernel ({os.uname().release}) has no {op}: {fix}"
    sendzc.check_opcode(probe, "send")              # ... and SEND is there: --no-zc works


def test_an_opcode_missing_ends_the_sender_in_one_line_and_leaks_nothing(capsys, monkeypatch):
    # (the same fake, through main(): the ring is real, only its probe answer is not)
    monkeypatch.setattr(sendzc.Ring, "probe", lambda ring: probe_without(sendzc.IORING_OP_SEND_ZC))
    with udp_sink_socket() as port:
        args = ("-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp")
        main_in_process(capsys, *args)                      # warm up imports and caches
        fds, maps = open_fds(), mappings()
        status, out, err = main_in_process(capsys, *args)
        assert (open_fds(), mappings()) == (fds, maps)
    assert (status, out) == (1, "")
    assert err == [f"sendzc: this kernel ({os.uname().release}) has no IORING_OP_SEND_ZC (Linux 6.0+): "
                   f"use --no-zc (IORING_OP_SEND, which copies), or a newer kernel"]


def test_the_private_sink_refuses_nobody(nobody):
    p = nobody("bench", "-t", "0.1")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == RUNTIME_LINES["private sink, not root"]


def test_raw_refuses_nobody_without_cap_net_raw(nobody):
    p = nobody("-D", "127.0.0.1", "-t", "0.2", "-s", "1400", "raw")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == RUNTIME_LINES["raw without CAP_NET_RAW"]


# RLIMIT_MEMLOCK, for a user without CAP_IPC_LOCK: the rings (on 6.18, as
# before 5.12), the registered buffer, and each zero-copy send's pinned pages
# all count against it. 16 KiB holds a ring of 8 entries, not one of 512,
# and never the 64 KiB payload.
MEMLOCK = 16 << 10


def test_locked_memory_too_low_for_the_ring(nobody):
    with udp_sink_socket() as port:
        p = nobody("-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp", memlock=MEMLOCK)
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == RUNTIME_LINES["locked memory: the ring"]


def test_locked_memory_too_low_for_the_registered_buffer(nobody):
    with udp_sink_socket() as port:
        p = nobody("-D", "127.0.0.1", "-p", port, "-t", "0.2", "--entries", "8", "udp", memlock=MEMLOCK)
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == RUNTIME_LINES["locked memory: the registered buffer"]


def test_locked_memory_too_low_for_zero_copy_sends(nobody):
    with udp_sink_socket() as port:
        p = nobody("-D", "127.0.0.1", "-p", port, "-t", "0.2", "--entries", "8", "--no-fixed-buf",
                   "udp", memlock=MEMLOCK)
    assert (p.returncode, p.stdout) == (1, "")      # refused at the first send: no result to show
    assert only_line(p) == RUNTIME_LINES["locked memory: zero-copy sends"]


# --- the peer is gone ------------------------------------------------------------

def test_tcp_refused_by_an_absent_receiver():
    port = free_port()
    p = tool("-D", "127.0.0.1", "-p", port, "-t", "0.2", "tcp")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == (f"sendzc: tcp: connection refused by 127.0.0.1:{port}: start the receiver "
                            f"there (`python3 sendzc.py rx -p {port} tcp`)")


def udp_refused_line(port):
    return (f"sendzc: udp: 127.0.0.1:{port} refused the data (ECONNREFUSED, an ICMP port "
            f"unreachable): start the receiver there (`python3 sendzc.py rx -p {port} udp`)")


def test_udp_refused_by_icmp_port_unreachable():
    port = free_port(socket.SOCK_DGRAM)
    p = tool("-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp")
    assert p.returncode == 1
    assert only_line(p) == udp_refused_line(port)
    # The partial result: the first send went out before the ICMP came back;
    # the failed ones still posted notifications, and the output says so.
    tx, txc = re.match(r"tx=(\d+) \(\d+ MB\) txc=(\d+),", p.stdout).groups()
    assert int(tx) >= 1 and int(txc) >= int(tx)
    if int(txc) > int(tx):
        assert "note: txc counts the notifications of all" in p.stdout


def test_a_refused_run_in_process_releases_every_fd_and_mapping():
    """The error path tears down as the good one does: ring, buffer, socket, all gone."""
    def refused_run():
        port = free_port(socket.SOCK_DGRAM)
        cfg = sendzc.SendConfig(proto="udp", addr="127.0.0.1", port=port, size=1400, seconds=0.2)
        with contextlib.ExitStack() as stack:
            sock = sendzc.open_tx_socket("udp", socket.AF_INET, cfg.addr, cfg.port)
            stack.callback(sock.close)
            payload = sendzc.Payload(cfg.size)
            stack.callback(payload.close)
            result = sendzc.UringSender(cfg, sock, payload, stack).run()
        assert payload.lent == 0 and payload.map.closed     # every notification came back first
        return result, port
    refused_run()                                 # warm up imports and caches
    fds, maps = open_fds(), mappings()
    result, port = refused_run()
    assert (open_fds(), mappings()) == (fds, maps)
    assert f"sendzc: {result.error}" == udp_refused_line(port)
    assert result.undrained == 0 and result.failed >= 1
    assert result.notifications == result.requests + result.failed   # txc: the failed ones too


def test_an_exception_inside_run_leaves_the_payload_mapped_and_closes_the_rest():
    """Nothing unmaps the buffer while the kernel may hold it: an exception mid-run leaves it lent."""
    class Boom(Exception):
        pass

    def boom(nbytes, requests):
        raise Boom

    with udp_sink_socket() as port:
        cfg = sendzc.SendConfig(proto="udp", addr="127.0.0.1", port=port, size=1400, seconds=0.3)
        fds = open_fds()
        payload = sendzc.Payload(cfg.size)
        try:
            with pytest.raises(Boom), contextlib.ExitStack() as stack:
                sock = sendzc.open_tx_socket("udp", socket.AF_INET, cfg.addr, cfg.port)
                stack.callback(sock.close)
                stack.callback(payload.close)
                sendzc.UringSender(cfg, sock, payload, stack).run(on_tick=boom, tick_ns=10**7)
            assert payload.lent == 1 and not payload.map.closed    # kept: the run never settled it
            assert open_fds() == fds                                # ring and socket are gone
        finally:
            payload.lent = 0                  # the ring is closed: the kernel let go; now we may
            payload.close()


TCP_RESET_LINE = ("sendzc: tcp: the connection to {addr}:{port} was closed or reset mid-run (the "
                  "receiver quit?): the result above is partial; start the receiver again "
                  "(`python3 sendzc.py rx -p {port} tcp`) and rerun")


def stalled_listener():
    """A TCP receiver that never reads: listen() completes the handshake, nothing accepts."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def test_a_receiver_that_stops_reading_ends_in_one_line_after_the_drain():
    with stalled_listener() as listener:
        port = listener.getsockname()[1]
        started = time.monotonic()
        p = tool("-D", "127.0.0.1", "-p", port, "-t", "0.3", "tcp")
        took = time.monotonic() - started
    assert took < 0.3 + sendzc.DRAIN_SECONDS + 2, "-t did not end the run"
    assert p.returncode == 1
    assert only_line(p) == (
        f"sendzc: tcp: 127.0.0.1:{port} stopped taking data: completions were still missing "
        f"5 s after the run: check that the receiver is running and reading; the result above "
        f"is partial")
    undrained = int(re.search(r"warning: (\d+) completions never came", p.stdout).group(1))
    assert undrained > 0


def test_t_ends_the_run_even_with_sends_stuck_in_the_kernel():
    """A receiver that pauses past -t: the loop ends on time; the drain then sees it all through."""
    with stalled_listener() as listener:
        port = listener.getsockname()[1]
        got = []

        def late_reader():
            time.sleep(1.5)
            conn, _ = listener.accept()
            with conn:
                got.append(sum(iter(lambda: len(conn.recv(1 << 20)), 0)))
        reader = threading.Thread(target=late_reader)
        reader.start()
        try:
            doc = tool_json("-D", "127.0.0.1", "-p", port, "-t", "0.3", "tcp")
        finally:
            reader.join(30)
    row = doc["rows"][0]
    assert row["seconds"] < 1.0                      # the loop stopped at -t, not when the reader woke
    assert row["error"] is None and row["undrained"] == 0
    assert got == [row["bytes"]] and row["notifications"] == row["requests"] > 0


# --- ENOBUFS: MSG_ZEROCOPY and net.core.optmem_max -------------------------------

@contextlib.contextmanager
def sink_with_optmem(value):
    """A namespace of our own with a sink, its net.core.optmem_max set (per namespace since 6.9).

    The setting dies with the namespace: nothing on the host changes.
    """
    if not IS_ROOT or not HAVE_IP:
        pytest.skip("needs root and iproute2 to create network namespaces")
    with netns() as ns:
        make_sink(ns)
        ip("netns", "exec", ns, "sh", "-c", f"echo {value} > /proc/sys/net/core/optmem_max")
        host = subprocess.run(["cat", "/proc/sys/net/core/optmem_max"], capture_output=True, text=True)
        if host.stdout.strip() == str(value):
            pytest.skip("net.core.optmem_max is not per namespace on this kernel (6.9+)")
        yield ns


def test_enobufs_when_optmem_max_cannot_hold_one_completion():
    before = host_net()
    with sink_with_optmem(1) as ns:
        p = tool("bench", "-D", SINK4, "-t", "0.2", "--batches", "8", ns=ns)
    assert_host_unchanged(before)
    assert p.returncode == 1
    assert only_line(p) == RUNTIME_LINES["ENOBUFS, optmem_max too small for one completion"]
    assert re.search(r"^send\(2\) MSG_ZEROCOPY .*\(failed\)$", p.stdout, re.M)


def test_enobufs_when_optmem_max_is_small_backs_off_and_says_so():
    with sink_with_optmem(1000) as ns:
        doc = bench_json("-D", SINK4, "-t", "0.2", "--batches", "8", ns=ns)
    row = next(r for r in doc["rows"] if r["mode"] == "msg_zerocopy")
    if row["enobufs"] == 0:
        pytest.skip("optmem_max 1000 leaves room for many completions on this kernel")
    assert row["error"] is None and row["requests"] > 0 and row["undrained"] == 0
    assert row["notifications"] == row["requests"]       # every send, retried, completed


# --- Ctrl-C ------------------------------------------------------------------------

INTERRUPTED_LINE = RUNTIME_LINES["Ctrl-C"]


def test_ctrl_c_ends_the_sender_with_its_partial_result():
    with udp_sink_socket() as port:
        p = subprocess.Popen([sys.executable, TOOL, "-D", "127.0.0.1", "-p", str(port), "-t", "10",
                              "-i", "0.1", "-s", "1400", "udp"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = p.stdout.readline()            # an interval line: the run is under way
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=10)
        finally:
            p.kill()
    assert INTERVAL_LINE.match(first), first
    assert p.returncode == 130
    assert re.search(r"^tx=\d+ \(\d+ MB\) txc=\d+", out, re.M)
    assert err.splitlines() == [INTERRUPTED_LINE]


def test_ctrl_c_twice_stops_waiting_for_notifications():
    with stalled_listener() as listener:
        p = subprocess.Popen([sys.executable, TOOL, "-D", "127.0.0.1", "-p",
                              str(listener.getsockname()[1]), "-t", "30", "tcp"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)                        # stalled: sends wait in the kernel for room
            p.send_signal(signal.SIGINT)           # ends the run; the drain waits ...
            time.sleep(0.3)
            started = time.monotonic()
            p.send_signal(signal.SIGINT)           # ... no longer
            out, err = p.communicate(timeout=10)
            took = time.monotonic() - started
        finally:
            p.kill()
    assert p.returncode == 130 and took < 2
    assert re.search(r"^warning: \d+ completions never came", out, re.M)
    assert err.splitlines() == [INTERRUPTED_LINE]


# --- an OSError nothing closer expected ----------------------------------------------

def test_out_of_file_descriptors_is_one_line_naming_the_call():
    """However few descriptors it gets, the tool ends in one line naming the call that ran out."""
    import resource
    seen = set()
    with udp_sink_socket() as port:
        for n in range(5, 24):
            p = subprocess.run([sys.executable, TOOL, "-D", "127.0.0.1", "-p", str(port), "-t", "0.1",
                                "-s", "1400", "udp"], capture_output=True, text=True, timeout=30,
                               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)))
            if p.returncode == 0:
                break                              # enough descriptors now
            if "Traceback" in p.stderr and "sendzc.py" not in p.stderr:
                continue                           # the interpreter itself could not start
            assert p.returncode == 1
            m = re.fullmatch(r"sendzc: (.+) failed: EMFILE \(Too many open files\): raise the "
                             r"limit on open files \(`ulimit -n`: (\d+)\)", only_line(p))
            assert m and int(m.group(2)) == n, p.stderr
            seen.add(m.group(1))
    # The ring fd itself, the fds Python's mmap dup()s of it, the probe's socketpair.
    assert "io_uring_setup" in seen and "mmap.mmap() in Ring._map" in seen, seen


# === PERF (issue 15; issue 13 items 5 and 6) ===============================

def test_hot_loop_counts_every_cqe_of_a_clean_run_into_the_sink(sink):
    """The datagram hot loop (whole batches judged by one bytes comparison) against the kernel:
    every send whole, one notification each, none copied; in a ring small enough that the
    CQ wraps many times, and at a batch that does not divide it."""
    for opts in (["-r", "8"], ["-r", "3", "--entries", "16"], ["--no-zc", "-r", "5"]):
        row = tool_json("-4", "-D", SINK4, "-t", "0.3", *opts, "udp", ns=sink)["rows"][0]
        check_row(row, 65435)
        assert row["mb_per_sys_s"] > 0 and row["sys_speedup"] is None


def test_hot_loop_hands_odd_batches_to_the_bulk_judge():
    """Over loopback every notification says COPIED, so no batch is the clean one: the
    bulk judge counts them, and the receiver's count matches the sender's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        row = tool_json("-D", "127.0.0.1", "-p", rx.getsockname()[1], "-t", "0.3", "-s", "1400",
                        "udp")["rows"][0]
    assert row["error"] is None and row["requests"] > 0
    assert row["bytes"] == row["requests"] * 1400
    assert row["notifications"] == row["requests"] == row["zc_copied"]


def test_flows_total_rate_is_over_the_common_window(sink):
    """13.5: the total divides all bytes by one window, from the first flow's start to the last
    one's end, which lies inside the wall time the test measures around the whole run."""
    t0 = time.monotonic()
    doc = tool_json("-4", "-D", SINK4, "-t", "0.3", "-n", "4", "-s", "1400", "udp", ns=sink)
    wall = time.monotonic() - t0
    total, rows = doc["total"], doc["rows"]
    assert len(rows) == 4 and total["bytes"] == sum(r["bytes"] for r in rows)
    # Started together, stopped at one deadline: the window is about -t, never the sum.
    assert max(r["seconds"] for r in rows) <= total["seconds"] < 0.3 + 0.25
    assert total["seconds"] < wall
    assert total["mb_per_s"] == pytest.approx(total["bytes"] / 2**20 / total["seconds"], rel=1e-3)
    assert total["cpu_sys_s"] == pytest.approx(sum(r["cpu_sys_s"] for r in rows), abs=0.01)


def test_flows_trace_under_json_goes_to_stderr_and_the_document_parses(sink):
    """13.6: --trace with -n 2 --json: stdout is one JSON document, the trace is on stderr."""
    p = tool("--json", "-4", "-D", SINK4, "-t", "0.3", "-n", "2", "--trace", "2", "udp", ns=sink)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert len(doc["rows"]) == 2
    assert sum(line.startswith("trace: SQE") for line in p.stderr.splitlines()) == 4


def test_flows_are_processes_and_ctrl_c_reaches_them_through_the_parent(sink):
    """-n 2 runs each flow in a child process; SIGINT to the parent alone stops them all:
    exit 130, a partial result well before -t, and no child left behind."""
    proc = subprocess.Popen(["ip", "netns", "exec", sink, sys.executable, TOOL, "--json", "-4",
                             "-D", SINK4, "-t", "20", "-n", "2", "udp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while len(children_of(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        kids = children_of(proc.pid)
        assert len(kids) == 2
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["total"]["interrupted"] and doc["total"]["seconds"] < 10
    assert all(r["bytes"] > 0 and r["undrained"] == 0 for r in doc["rows"])
    assert not any(os.path.exists(f"/proc/{k}") for k in kids)


def children_of(pid):
    """The pids whose parent is pid."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


RUNTIME_LINES["a flow's process killed"] = (
    "sendzc: flow 0 ended without a word (killed by SIGKILL): run it alone (without -n) to see why")


def test_a_flow_killed_mid_run_is_one_line_and_the_others_are_reaped(sink):
    proc = subprocess.Popen(["ip", "netns", "exec", sink, sys.executable, TOOL, "-4", "-D", SINK4,
                             "-t", "1.5", "-n", "2", "udp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while len(children_of(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        kids = sorted(children_of(proc.pid))
        assert len(kids) == 2
        time.sleep(0.3)
        os.kill(kids[0], signal.SIGKILL)             # the first forked: flow 0
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert err.splitlines() == [RUNTIME_LINES["a flow's process killed"]]
    assert not any(os.path.exists(f"/proc/{k}") for k in kids)
