# SPDX-License-Identifier: MIT
"""Tests for sendzc.py against the real kernel: real rings, real sockets.

Network tests run inside network namespaces that the tests create and always
delete (a sink: an ifb device that drops every packet; a pair: two namespaces
joined by veth). Traffic goes only to loopback or to addresses inside those
namespaces. Tests that need root, ifb or a newer kernel skip with the reason.
"""

import ast
import contextlib
import ctypes
import errno
import itertools
import json
import math
import os
import re
import shlex
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


def make_sink(ns, mtu=65535):
    """An ifb device (MTU 65535 unless told): every packet routed out of it is dropped."""
    made = ip("-n", ns, "link", "add", "ifb0", "type", "ifb", check=False)
    if made.returncode:
        pytest.skip(f"no ifb device here: {made.stderr.strip()}")
    ip("-n", ns, "link", "set", "ifb0", "mtu", str(mtu), "up")
    ip("-n", ns, "addr", "add", "198.18.0.1/24", "dev", "ifb0")
    ip("-n", ns, "addr", "add", "2001:2::1/64", "dev", "ifb0", "nodad")


def sink_namespace(mtu=65535):
    """A namespace holding a sink (make_sink), for a module-scoped fixture to yield from."""
    if not IS_ROOT or not HAVE_IP:
        pytest.skip("needs root and iproute2 to create network namespaces")
    with netns() as ns:
        make_sink(ns, mtu)
        yield ns


@pytest.fixture(scope="module")
def sink():
    yield from sink_namespace()


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


def tool_json_to_loopback(*args):
    """tool_json() of a sender to a UDP socket on loopback that nobody reads (-D and -p given)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        return tool_json("-D", "127.0.0.1", "-p", rx.getsockname()[1], *args)


def kernel_at_least(major, minor):
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def mappings():
    with open("/proc/self/maps") as f:
        return len(f.readlines())


# =============================================================================
# The file's shape, and the kernel ABI
# =============================================================================

def sendzc_parts():
    """sendzc.py's top-level statements as (Part I, Part II), split at section 8's banner."""
    import ast
    with open(TOOL) as f:
        src = f.read()
    part_two = re.search(r"^# =+\n# 8\. ", src, re.M)
    boundary = src[:part_two.start()].count("\n") + 1
    body = ast.parse(src).body
    return [n for n in body if n.lineno < boundary], [n for n in body if n.lineno >= boundary]


def test_part_one_never_uses_part_two():
    """Part I (the tutorial) reads alone: no name it uses is defined only in Part II (the tool)."""
    import ast

    def defined(nodes):
        names = set()
        for n in nodes:
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                names.add(n.name)
            elif isinstance(n, (ast.Assign, ast.AnnAssign)):
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                names |= {t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name)}
        return names

    part_one, part_two = sendzc_parts()
    tool_only = defined(part_two) - defined(part_one)
    assert len(tool_only) > 100             # the split found Part II
    used = set()
    for node in part_one:
        local = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        local |= {a.arg for n in ast.walk(node) if isinstance(n, ast.arguments)
                  for a in n.args + n.kwonlyargs + n.posonlyargs}
        used |= {(n.lineno, n.id) for n in ast.walk(node)
                 if isinstance(n, ast.Name) and n.id in tool_only - local}
    assert not used, f"Part I uses Part II's names: {sorted(used)}"


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
        assert ring.cq_dropped == 0 and not ring.cq_held_back


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
        probe = sendzc.get_probe(ring)
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


def test_first_send_over_loopback_posts_its_result_then_its_notification():
    """Part I's first_send(): one SEND_ZC, a whole result with F_MORE, then one F_NOTIF that says it copied."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        said = []
        cqes = sendzc.first_send(rx.getsockname(), 4096, said.append)
        assert rx.recv(65536) == (b"zero-copy!" * 410)[:4096]       # the bytes arrived as sent
    (res, flags), (notif_res, notif_flags) = cqes
    assert (res, flags) == (4096, sendzc.IORING_CQE_F_MORE)
    assert notif_flags == sendzc.IORING_CQE_F_NOTIF
    assert sendzc.copied(notif_res)                                    # loopback: the kernel copies
    assert said[1:] == ["result: 4096 bytes sent",
                        "  F_MORE: the kernel still holds the buffer; a notification will follow",
                        "notification: the buffer is ours again; the kernel copied (REPORT_USAGE): "
                        "the receiver is on this host, or the path fragments"]


def test_first_send_from_the_command_line_into_the_sink_and_as_nobody_over_loopback(nobody):
    """`--first-send`: root sends into the private sink, zero-copy; nobody over loopback, copied."""
    p = tool("--first-send")
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("into the private sink")
    assert lines[4] == "notification: the buffer is ours again; the kernel sent it zero-copy (REPORT_USAGE)"
    assert lines[5:] == ["then the same in bulk: 64 SEND_ZC of 4096 bytes, 8 per io_uring_enter",
                         "  8 io_uring_enter for 64 requests: 64 results, 262144 bytes sent",
                         "  64 notifications for 64 results with F_MORE (0 said the kernel copied); "
                         "0 CQEs still owed"]
    p = nobody("--first-send", "--count", "40", "-r", "16")
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("over loopback (no root")
    assert lines[2] == "result: 4096 bytes sent"
    assert lines[4].startswith("notification: the buffer is ours again; the kernel copied")
    assert lines[5:] == ["then the same in bulk: 40 SEND_ZC of 4096 bytes, 16 per io_uring_enter",
                         "  3 io_uring_enter for 40 requests: 40 results, 163840 bytes sent",
                         "  40 notifications for 40 results with F_MORE (40 said the kernel copied); "
                         "0 CQEs still owed"]



def test_a_buffer_still_lent_to_the_kernel_stays_mapped_after_close_and_collection():
    """Pool.close() and Payload.close() with notifications owed: the pages stay mapped until exit.

    A collected mmap unmaps itself, so close() must keep it referenced.
    """
    def mapped(addr):
        with open("/proc/self/maps") as f:
            return any(int(lo, 16) <= addr < int(hi, 16)
                       for lo, hi in (line.split()[0].split("-") for line in f))
    for buf in (sendzc.Pool(1, 4096), sendzc.Payload(4096)):
        addr, buf.lent = buf.addr, 1
        buf.close()
        del buf
        assert mapped(addr)
        sendzc.STILL_LENT.pop().close()                    # the test's own: unmapped now
        assert not mapped(addr)
    buf = sendzc.Pool(1, 4096)
    addr = buf.addr
    buf.close()                                           # nothing lent: unmapped at once
    assert not mapped(addr)

def test_first_sends_in_bulk_over_loopback_one_notification_per_request_every_byte_received():
    """Part I's bulk_send(): count*size bytes in the results, one notification per F_MORE, none owed.

    Fewer io_uring_enter calls than batches would be impossible (each submits
    at most one batch), and one per request would mean it did not batch.
    """
    data = (b"zero-copy!" * 140)[:1400]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        fds, said = open_fds(), []
        tally, enters = sendzc.bulk_send(rx.getsockname(), 50, 8, 1400, said.append)
        assert open_fds() == fds                              # socket and ring closed
        rx.setblocking(False)
        got = []
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(rx.recv(65536))
    assert (tally.results, tally.ok, tally.bytes) == (50, 50, 50 * 1400)       # from the CQEs' res
    assert (tally.notifs, tally.due, tally.copied) == (50, 0, 50)    # one each; loopback copies
    assert (tally.failed, tally.short, tally.eagain) == (0, 0, 0)
    assert 7 <= enters < 50                                   # 50 in batches of 8: 7 at least
    assert got == [data] * 50                                 # every datagram, whole, as sent
    assert said[-1] == "  50 notifications for 50 results with F_MORE (50 said the kernel copied); 0 CQEs still owed"


def test_the_ring_says_when_the_kernel_holds_cqes_back_and_the_overflow_word_stays_0():
    """8 NOPs into a CQ of 4: 4 posted, 4 held back (IORING_SQ_CQ_OVERFLOW), none dropped."""
    with sendzc.Ring(4, cq_entries=4) as ring:
        sqe = sendzc.io_uring_sqe()
        sendzc.prep_nop(sqe)
        for _ in range(2):
            ring.place(bytes(sqe) * 4)
            ring.submit_and_wait(0)
        assert ring.cq_ready() == 4 and ring.cq_held_back and ring.cq_dropped == 0
        ring.cq_advance(4)
        ring.submit_and_wait(0)                   # an enter flushes the held-back CQEs into the room
        assert ring.cq_ready() == 4 and not ring.cq_held_back and ring.cq_dropped == 0


@pytest.mark.parametrize("how", ["-f", "--pool"])
def test_a_held_back_cqe_ends_the_run_in_one_line_and_nothing_is_lost(monkeypatch, how):
    """A CQ as small as the SQ: a batch's notifications find no room; the run ends saying so."""
    monkeypatch.setattr(sendzc, "CQ_ENTRIES_PER_SQ", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, contextlib.ExitStack() as stack:
        rx.bind(("127.0.0.1", 0))
        cfg = sendzc.SendConfig(proto="udp", addr="127.0.0.1", port=rx.getsockname()[1], size=1400,
                                seconds=0.5, batch=8, entries=8, flush=how == "-f",
                                pool=8 if how == "--pool" else 0)
        sock = sendzc.open_tx_socket("udp", socket.AF_INET, cfg.addr, cfg.port)
        stack.callback(sock.close)
        if how == "--pool":
            result = sendzc.run_reference(cfg, sock, stack)
        else:
            payload = sendzc.Payload(cfg.size)
            stack.callback(payload.close)
            result = sendzc.UringSender(cfg, sock, payload, stack).run()
    assert result.error == sendzc.CQ_HELD_BACK_LINE
    assert result.requests == result.notifications > 0 and result.undrained == 0
    assert result.seconds < 0.4                   # it ended there, not at -t


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
    # Batches of half the SQ, and one that leaves less than a batch of room ahead of it, too.
    for opts in ([], ["-r", "32"], ["-r", "256"], ["-r", "200", "--entries", "256"]):
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
    assert p.stderr.splitlines() == [readme_line("`raw` with zero-copy")]


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
    hello = b""                 # sendzc's control line, unanswered: then the data, on this connection
    if c.recv(1, socket.MSG_PEEK) == b"{":
        while not hello.endswith(b"\\n"):
            hello += c.recv(1)
    buf = bytearray(1 << 20); n = 0; bad = None
    pat = bytes(range(97, 123)) * ((1 << 20) // 26 + 2)
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        if bad is None and buf[:k] != pat[n % 26:n % 26 + k]:
            bad = n
        n += k
    print(json.dumps({"bytes": n, "bad": bad, "hello": len(hello)}))
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
    assert f"after the {got['hello']}-byte hello line" in row["receiver_note"]     # (not sendzc rx)
    assert got["bad"] is None                      # ... and every byte is the pattern, in order
    if row["mode"] != "send":
        assert row["notifications"] == row["requests"]
        # veth's receiver copies every byte: each notification says so (REPORT_USAGE, where the kernel has it)
        assert row["zc_copied"] in (row["notifications"], None)


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
    line = readme_line("io_uring disabled")[len("sendzc: "):]
    assert p.stderr.splitlines() == [f"sendzc: missing: io_uring_setup ({line})"]


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


def test_the_tables_speedup_is_the_kernels_rate_and_mb_s_x_keeps_pythons_share():
    # The RFC's pair: SEND_ZC's kernel rate 2.3x the baseline's, as with the C tools; the Python
    # baseline spent a fifth of its CPU outside the kernel, SEND_ZC at batch 8 a tenth.
    base, zc = result("msg_zerocopy_poll", 65435, 1000), result("send_zc_fixed", 65435, 2587.5)
    base.cpu_user_s, base.cpu_sys_s = 0.2, 0.8
    zc.cpu_user_s, zc.cpu_sys_s = 0.1, 0.9
    sendzc.set_speedups([base, zc])
    header, _, row = sendzc.format_table([base, zc])
    names = ("batch", "MB/s", "Gbit/s", "speedup", "user s", "sys s", "CPU s/GB", "sys MB/s", "MB/s x", "zc")
    assert header.split()[1:] == "batch MB/s Gbit/s speedup user s sys s CPU s/GB sys MB/s MB/s x zc".split()
    columns = dict(zip(names, row[len(sendzc.MODE_LABELS["send_zc_fixed"]):].split()))
    assert columns["speedup"] == "2.30x"          # (2587.5 / 0.9) / (1000 / 0.8)
    assert columns["MB/s x"] == "2.59x"           # 2587.5 / 1000: Python's share of the baseline in it
    assert any("speedup: sys MB/s over the MSG_ZEROCOPY" in line
               for line in sendzc.bench_footer([base, zc], [65435], True))


def tool_without_capabilities(*args):
    """The tool as root with no capabilities (it cannot unshare(CLONE_NEWNET), just as a user cannot)."""
    setpriv = shutil.which("setpriv")
    if IS_ROOT and setpriv is None:
        pytest.skip("needs setpriv (util-linux) to drop root's capabilities")
    prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"] if IS_ROOT else []
    return subprocess.run(prefix + [sys.executable, TOOL, *args], capture_output=True, text=True, timeout=30)


def test_bench_without_root_says_so_and_points_at_d():
    p = tool_without_capabilities("bench", "-t", "0.1")
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


def readme_comparison_tables():
    """Every comparison table README shows: (its header line, its row lines), as the tool printed them."""
    with open(os.path.join(HERE, "README.md")) as f:
        lines = f.read().splitlines()
    return [(line, list(itertools.takewhile(lambda l: l and not l.startswith("```"), lines[n + 1:])))
            for n, line in enumerate(lines) if re.match(r"mode\s+batch\s", line)]


def test_readme_comparison_table_matches_the_tool():
    """README's example tables have exactly the columns and rows the tool prints today: the header
    from format_table() itself, the rows from the default bench's plan (no run needed), so a row or
    column added to either side and not the other fails here; the baseline row reads 1.00x twice,
    and README's "N rows of S s" is the default run's."""
    header = sendzc.format_table([])[0]
    cfg = sendzc.bench_config(sendzc.bench_parser().parse_args([]))
    rows = [(sendzc.MODE_LABELS[mode], batch) for mode, batch in cfg.plan()]
    tables = readme_comparison_tables()
    assert tables, "README shows no comparison table"
    for head, lines in tables:
        assert head == header, f"README's columns:\n{head}\nthe tool's:\n{header}"
        found = [re.match(r"(.+?)\s+(\d+)\s", line) for line in lines]
        assert all(found), f"a line of README's table is no row: {lines}"
        labels = [(m.group(1), int(m.group(2))) for m in found]
        assert labels == rows, f"README's rows: {labels}\nthe tool's: {rows}"
        baseline = lines[rows.index((sendzc.MODE_LABELS[sendzc.BASELINE_MODE], 1))].split()
        assert baseline.count("1.00x") == 2, f"the baseline row, speedup and sys x: {baseline}"
    with open(os.path.join(HERE, "README.md")) as f:
        said = re.findall(r"(\d+) rows of (\S+) s\b", f.read())
    assert said and set(said) == {(str(len(rows)), f"{cfg.seconds:g}")}, said


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
    doc = tool_json_to_loopback("-t", "0.5", "-i", "0.2", "-s", "1400", "udp")
    check_against_readme(doc, "### The JSON document")
    assert len(doc["rows"]) == 1                              # a single send is one row
    check_against_readme(doc["rows"][0], "### A JSON row", options=["-i"])
    assert len(doc["rows"][0]["intervals"]) == math.ceil(0.5 / 0.2)


@needs_root
def test_bench_interval_lines_are_ceil_t_over_i_per_row():
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


@needs_root
def test_bench_in_process_comes_home_and_leaks_nothing(capsys):
    """bench_main() leaves its private namespace for ours, and closes every fd and mapping."""
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
@needs_root
def test_bench_leaves_the_host_as_it_found_it(how):
    """A private namespace dies with the process: whatever ends bench, nothing is left."""
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
            assert err.splitlines() == [readme_line("Ctrl-C")]
            table = [line for line in out.splitlines() if re.match(r"(send|io_uring|MSG_ZEROCOPY)", line)]
            assert table[0].startswith("send(2) ") and len(table) >= 2    # the rows so far
            assert "(interrupted)" in table[-1]
        else:
            assert proc.returncode == -signal.SIGKILL
    assert_host_unchanged(before)


@needs_root
def test_bench_sweep_runs_the_zero_copy_path_at_every_batch():
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
    return start_rx_args("--json", *args, ns=ns)[0]


@contextlib.contextmanager
def reaped(proc):
    """proc, killed and waited for on the way out if it is still running."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def ctrl_c(proc):
    """SIGINT to a running tool: (stdout, stderr) once it has ended, with 130 and no traceback."""
    proc.send_signal(signal.SIGINT)
    with reaped(proc):
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "Traceback" not in err, err
    return out, err


def interrupt_timed(proc, after_s):
    """After after_s seconds, one SIGINT: (stdout, stderr, seconds the tool took to end after it)."""
    with reaped(proc):
        time.sleep(after_s)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    return out, err, time.monotonic() - started


def finish_rx(p, timeout=30):
    """Wait for rx to end: (exit status, its JSON document or None, its stderr)."""
    with reaped(p):
        out, err = p.communicate(timeout=timeout)
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
    assert set(doc) == {"tool", "version", "kernel", "host", "params", "rows", "error"}
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
    assert one_line(p.stderr) == readme_line("TCP: the receiver quits or resets mid-run", at(PAIR4[1], port))
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
    assert one_line(err) == readme_line("Ctrl-C")


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_rx_ctrl_c_before_any_sender(proto):
    rx = start_rx("-4", "-p", free_port(), proto)
    rx.send_signal(signal.SIGINT)
    status, doc, err = finish_rx(rx, timeout=5)
    assert status == 130
    assert one_line(err) == readme_line("Ctrl-C")
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


def test_a_uring_receiver_refused_midway_tears_down_cleanly(monkeypatch):
    """A setup step that refuses after the cleanups are registered: the refusal, not AttributeError."""
    def refused(self, fds):
        raise OSError(errno.EPERM, "io_uring_register: EPERM")
    monkeypatch.setattr(sendzc.Ring, "register_files", refused)
    a, b = socket.socketpair()
    with a, b, pytest.raises(OSError, match="EPERM"), contextlib.ExitStack() as stack:
        buf = sendzc.RxBuffer(4096)
        stack.callback(buf.close)
        sendzc.UringReceiver(b, buf, stack)


def receive_once(cfg):
    """rx in this process: listen, serve one sender, return its RxResult (nothing printed)."""
    with sendzc.listen_for(cfg) as sock:
        return sendzc.serve_one(cfg, sock, False, None)


@contextlib.contextmanager
def tcp_receiver_on_a_socketpair():
    """open_receiver() for a TCP rx on one end of a socketpair: (the other end, the receiver, its result)."""
    a, b = socket.socketpair()
    with a, b, contextlib.ExitStack() as stack:
        buf = sendzc.RxBuffer(4096)
        stack.callback(buf.close)
        result = sendzc.RxResult("tcp", "")
        yield a, sendzc.open_receiver(sendzc.RxConfig(), b, buf, stack, result), result


def test_without_io_uring_tcp_falls_back_to_recv_into_and_says_so(monkeypatch):
    def refused(*args, **kw):
        raise OSError(errno.EPERM, "io_uring_setup: EPERM: Operation not permitted")
    monkeypatch.setattr(sendzc, "Ring", refused)
    with tcp_receiver_on_a_socketpair() as (a, rx, result):
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
        result = receive_once(cfg)
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


# Every failure line, read from README's "When it fails" tables, the one place
# it is written: a row is `| case | `` line `` | status |`. A usage row's case
# ends in its command (`sendzc.py ...`, what the user typed), which the test
# runs as written; nothing is sent, as the command line is checked before any
# socket or ring exists. The tests that make a runtime case happen look its
# line up by the case's first words, the row's example values (an address, a
# port, the kernel release) replaced by the run's own.
README_ROW = re.compile(r"^\| (?P<case>.*?) \| `` (?P<line>.*) `` \| (?P<status>[^|]*) \|$")
USAGE_CASE = re.compile(r"(?P<case>.*?):? `sendzc\.py (?P<args>[^`]*)`")


def readme_rows():
    """{case: (line, status)} for every row of README's failure tables."""
    with open(os.path.join(HERE, "README.md")) as f:
        rows = [README_ROW.match(l) for l in f.read().splitlines()]
    return {m["case"]: (m["line"], m["status"]) for m in rows if m}


README_ROWS = readme_rows()
USAGE_MISTAKES = {m["case"]: (shlex.split(m["args"]), line)
                  for case, (line, status) in README_ROWS.items() if status == "2"
                  for m in [USAGE_CASE.fullmatch(case)] if m}
# A usage row whose line holds this host's own numbers (-n's limit) does not end in its
# command: it is not run as written, and a test of its own pins it as a runtime row's.
PINNED_USAGE = {case for case, (_, status) in README_ROWS.items()
                if status == "2" and not USAGE_CASE.fullmatch(case)}


def readme_cases(key):
    """The README rows whose case is `key`, else those whose case starts with it."""
    return [c for c in README_ROWS if c == key] or [c for c in README_ROWS if c.startswith(key)]


def readme_swap(key, values, escape):
    """The line of the one row `key` names, each example (a key of values) replaced by its value."""
    cases = readme_cases(key)
    assert len(cases) == 1, f"README's failure tables have {len(cases)} rows for {key!r}"
    line = README_ROWS[cases[0]][0]
    values = {example: str(value) for example, value in dict(values).items()}
    for example in values:
        assert example in line, f"README's line for {key!r} has no {example!r}: {line}"
    examples = "|".join(re.escape(e) for e in sorted(values, key=len, reverse=True))
    parts = re.split(f"({examples})", line) if values else [line]
    return "".join(values[part] if i % 2 else escape(part) for i, part in enumerate(parts))


def readme_line(key, values=()):
    """The exact line of README's row for `key`, with this run's values for the row's examples."""
    return readme_swap(key, values, str)


def readme_pattern(key, groups):
    """A regex of README's row for `key`, each example a regex of what may stand there."""
    return re.compile(readme_swap(key, groups, re.escape))


def at(addr, port):
    """The peer in README's lines, 10.0.0.2:8000, as this run's."""
    return {"10.0.0.2": addr, "8000": port}


def test_every_runtime_row_of_the_readme_is_pinned_by_a_test():
    """Each row not of status 2 is named (its case, or its first words) by a string in this file."""
    with open(__file__) as f:
        strings = {n.value for n in ast.walk(ast.parse(f.read()))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    named = {cases[0] for cases in map(readme_cases, strings) if len(cases) == 1}
    assert ({case for case, (_, status) in README_ROWS.items() if status != "2"} | PINNED_USAGE) - named == set()


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


def seccomp_script(rules: str, argv_from: int) -> str:
    """A script that installs a seccomp filter (program: rules, after an architecture check) and
    execs python with sys.argv[argv_from:]; the filter survives exec (PR_SET_NO_NEW_PRIVS makes
    that allowed without root)."""
    return SECCOMP_HEAD + textwrap.dedent(rules) + SECCOMP_TAIL.replace("ARGV_FROM", str(argv_from))


SECCOMP_HEAD = textwrap.dedent("""
    import ctypes, errno, os, platform, sys
    libc = ctypes.CDLL(None, use_errno=True)

    class sock_filter(ctypes.Structure):          # <linux/filter.h>
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class sock_fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(sock_filter))]

    BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06     # BPF_LD|BPF_W|BPF_ABS, ...
    SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
    AUDIT_ARCH, NR_SETSOCKOPT = {"x86_64": (0xC000003E, 54), "aarch64": (0xC00000B7, 208)}[platform.machine()]
    PR_SET_SECCOMP, SECCOMP_MODE_FILTER, PR_SET_NO_NEW_PRIVS = 22, 2, 38
    ARCH_CHECK = [
        (BPF_LD_W_ABS, 0, 0, 4),                   # seccomp_data.arch
        (BPF_JEQ_K, 1, 0, AUDIT_ARCH),             # ours: go on; another ABI's numbers differ:
        (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),   # refuse it outright
    ]
""")
SECCOMP_TAIL = textwrap.dedent("""
    program = ARCH_CHECK + program
    filters = (sock_filter * len(program))(*[sock_filter(*i) for i in program])
    prog = sock_fprog(len(program), filters)
    ulong = ctypes.c_ulong
    if libc.prctl(PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:
        sys.exit(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog), ulong(0), ulong(0)) != 0:
        sys.exit(f"prctl(PR_SET_SECCOMP): {os.strerror(ctypes.get_errno())}")
    os.execv(sys.executable, [sys.executable, *sys.argv[ARGV_FROM:]])
""")
# Answers io_uring_setup/enter/register with an errno, as container runtimes'
# default profiles do, then execs the tool.
SECCOMP_EXEC = seccomp_script("""
    err = getattr(errno, sys.argv[1])
    program = [
        (BPF_LD_W_ABS, 0, 0, 0),                   # seccomp_data.nr
        (BPF_JEQ_K, 3, 0, 425),                    # io_uring_setup
        (BPF_JEQ_K, 2, 0, 426),                    # io_uring_enter
        (BPF_JEQ_K, 1, 0, 427),                    # io_uring_register
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | err),
    ]
""", argv_from=2)


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

def test_io_uring_disabled_by_sysctl():
    with udp_sink_socket() as port, sysctl("kernel.io_uring_disabled", 2):
        p = tool("-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == readme_line("io_uring disabled")


def test_io_uring_disabled_in_process_leaks_nothing(capsys):
    with udp_sink_socket() as port, sysctl("kernel.io_uring_disabled", 2):
        args = ("-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp")
        main_in_process(capsys, *args)                      # warm up imports and caches
        fds, maps = open_fds(), mappings()
        status, out, err = main_in_process(capsys, *args)
        assert (open_fds(), mappings()) == (fds, maps)
    assert (status, out, err) == (1, "", [readme_line("io_uring disabled")])


def test_io_uring_limited_to_root_refuses_nobody(nobody):
    with udp_sink_socket() as port, sysctl("kernel.io_uring_disabled", 1):
        p = nobody("-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == readme_line("io_uring limited to root")


@pytest.mark.parametrize("case", ["a seccomp filter answers EPERM", "a seccomp filter answers ENOSYS"])
def test_io_uring_blocked_by_seccomp(case):
    with udp_sink_socket() as port:
        p = tool_under_seccomp(case.split()[-1], "-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == readme_line(case)


def test_the_receiver_needs_no_io_uring_even_under_seccomp():
    """rx under the same filter falls back to recv_into and says so; it does not fail."""
    port = free_port()
    rx = subprocess.Popen([sys.executable, "-c", SECCOMP_EXEC, "EPERM", TOOL, "rx", "--json", "-4",
                           "-p", str(port), "tcp"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert_rx_fell_back_to_recv_into(rx, port, "io_uring_setup")


def assert_rx_fell_back_to_recv_into(rx, port, refused):
    """rx (--json, tcp, on port) takes a sender whole through recv_into and names the refused call."""
    assert "waiting for a sender" in rx.stderr.readline()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(sendzc.pattern(100000))
    status, doc, err = finish_rx(rx)
    assert status == 0, err
    row = doc["rows"][0]
    assert row["method"] == "recv_into" and row["bytes"] == 100000 and row["verified"] is True
    assert row["note"].startswith(f"io_uring refused ({refused}: EPERM")


# The one fake in this file: no kernel this suite runs on lacks SEND_ZC, so a
# probe result without it is made by hand and fed to the check that reads it.
def probe_without(*ops):
    return sendzc.Probe(last_op=sendzc.IORING_OP_SENDMSG_ZC,
                        supported=frozenset(range(sendzc.IORING_OP_SENDMSG_ZC + 1)) - set(ops))


BEFORE_6_0 = (sendzc.IORING_OP_SEND_ZC, sendzc.IORING_OP_SENDMSG_ZC)     # 5.19, or Debian's 5.10


@pytest.mark.parametrize("mode,lacks,case,release", [
    ("send_zc_fixed", BEFORE_6_0, "an older kernel without SEND_ZC", "5.19.0"),
    ("sendmsg_zc", (sendzc.IORING_OP_SENDMSG_ZC,), "... without SENDMSG_ZC", "6.0.0"),
    # SEND_ZC is named first: "drop --sendmsg" would send 5.10 to an opcode it lacks too
    ("sendmsg_zc", BEFORE_6_0, "... without either, with `--sendmsg`", "5.10.0"),
])
def test_an_opcode_missing_on_an_older_kernel(mode, lacks, case, release):
    probe = probe_without(*lacks)
    with pytest.raises(sendzc.Fatal) as e:
        sendzc.check_opcode(probe, mode)
    assert e.value.status == 1
    assert f"sendzc: {e.value}" == readme_line(case, {release: os.uname().release})
    sendzc.check_opcode(probe, mode.replace("_zc", "").replace("_fixed", ""))   # the copying twin: --no-zc


def test_an_opcode_missing_ends_the_sender_in_one_line_and_leaks_nothing(capsys, monkeypatch):
    # (the same fake, through main(): the ring is real, only its probe answer is not)
    monkeypatch.setattr(sendzc, "get_probe", lambda ring: probe_without(sendzc.IORING_OP_SEND_ZC))
    with udp_sink_socket() as port:
        args = ("-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp")
        main_in_process(capsys, *args)                      # warm up imports and caches
        fds, maps = open_fds(), mappings()
        status, out, err = main_in_process(capsys, *args)
        assert (open_fds(), mappings()) == (fds, maps)
    assert (status, out) == (1, "")
    assert err == [readme_line("an older kernel without SEND_ZC", {"5.19.0": os.uname().release})]


def test_a_tcp_sender_without_send_zc_refuses_before_it_connects(capsys, monkeypatch):
    """Debian's 5.10: the sender connected, then found SEND_ZC missing, and rx reported a
    verified run of 0 bytes. The opcode is checked first: the receiver sees no connection."""
    monkeypatch.setattr(sendzc, "get_probe", lambda ring: probe_without(*BEFORE_6_0))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.2)
        status, out, err = main_in_process(capsys, "-D", "127.0.0.1", "-p", listener.getsockname()[1],
                                           "-t", "0.2", "tcp")
        with pytest.raises(socket.timeout):
            listener.accept()[0].close()                 # nobody ever connected
    assert (status, out) == (1, "")
    assert err == [readme_line("an older kernel without SEND_ZC", {"5.19.0": os.uname().release})]


def test_probe_reports_a_kernel_without_send_zc_and_exits_0(capsys, monkeypatch):
    """Debian's 5.10: --probe answers every question; no SEND_ZC is its verdict, not a refusal."""
    monkeypatch.setattr(sendzc, "get_probe", lambda ring: probe_without(*BEFORE_6_0))
    status, out, err = main_in_process(capsys, "--probe")
    assert (status, err) == (0, [])
    assert "opcodes: NOP yes  SENDMSG yes  SEND yes  RECV yes  SEND_ZC no  SENDMSG_ZC no" in out
    assert out.splitlines()[-1] == (
        "verdict: no zero-copy send on this kernel: missing IORING_OP_SEND_ZC (Linux 6.0+); what runs "
        "here: --no-zc (IORING_OP_SEND, which copies), and bench's send(2), MSG_ZEROCOPY and io_uring SEND "
        "rows")
    status, out, err = main_in_process(capsys, "--probe", "--json")
    assert (status, err) == (0, [])
    assert json.loads(out)["probe"]["missing"] == ["IORING_OP_SEND_ZC (Linux 6.0+)"]


def test_bench_without_send_zc_measures_the_rest_and_names_what_it_lacks(capsys, monkeypatch):
    """Debian's 5.10: bench measured three rows, then died at the first SEND_ZC row with no table."""
    monkeypatch.setattr(sendzc, "get_probe", lambda ring: probe_without(*BEFORE_6_0))
    with udp_sink_socket() as port:
        status, out, err = main_in_process(capsys, "bench", "-D", "127.0.0.1", "-p", port, "-t", "0.1")
        doc_status, doc, _ = main_in_process(capsys, "bench", "-D", "127.0.0.1", "-p", port, "-t", "0.1",
                                             "--json")
    assert (status, err) == (0, [])
    rows = [line.split("  ")[0].strip() for line in out.splitlines()
            if re.match(r"(send\(2\)|MSG_|io_uring)", line)]
    assert rows == ["send(2)", "send(2) MSG_ZEROCOPY", "MSG_ZEROCOPY, poll() per send", "io_uring SEND",
                    "io_uring SEND", "io_uring SEND_ZC", "io_uring SEND_ZC", "io_uring SEND_ZC fixed buf",
                    "io_uring SEND_ZC fixed buf", "io_uring SEND_ZC fixed -f", "io_uring SEND_ZC fixed -f"]
    assert out.count("not run: needs 6.0 (IORING_OP_SEND_ZC)") == 6
    doc = json.loads(doc)
    assert doc_status == 0 and doc["error"] is None
    assert [r["mode"] for r in doc["rows"]] == ["send_syscall", "msg_zerocopy", "msg_zerocopy_poll",
                                                "send", "send"]
    assert all(r["bytes"] > 0 for r in doc["rows"])
    assert {(n["mode"], n["batch"], n["needs"]) for n in doc["not_run"]} == {
        (m, b, "6.0 (IORING_OP_SEND_ZC)")
        for m in ("send_zc", "send_zc_fixed", "send_zc_fixed_flush") for b in (1, 8)}


def test_sendmsg_sends_from_a_plain_buffer_where_a_registered_one_is_refused(capsys, monkeypatch):
    """Debian 12's 6.1 refuses SENDMSG_ZC from a registered buffer (6.15+): --sendmsg ran only with
    --no-fixed-buf. Now it runs as that, and says so in one line."""
    refused = sendzc.feature("6.15", False,
                             "EINVAL: this kernel does not know SENDMSG_ZC from a registered buffer")
    monkeypatch.setattr(sendzc, "probe_send", lambda *a, **kw: refused)
    with udp_sink_socket() as port:
        status, out, err = main_in_process(capsys, "-D", "127.0.0.1", "-p", port, "-t", "0.2", "--sendmsg",
                                           "--json", "udp")
    assert status == 0
    assert err == [f"sendzc: note: --sendmsg sends from a plain buffer (as --no-fixed-buf): this kernel "
                   f"({os.uname().release}) refuses SENDMSG_ZC from a registered buffer (EINVAL: this kernel "
                   f"does not know SENDMSG_ZC from a registered buffer; Linux 6.15+)"]
    row = json.loads(out)["rows"][0]
    assert row["mode"] == "sendmsg_zc" and row["bytes"] > 0 and row["error"] is None


def test_the_private_sink_refuses_nobody(nobody):
    p = nobody("bench", "-t", "0.1")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == readme_line("the private sink (`bench`), not root")


def test_raw_refuses_nobody_without_cap_net_raw(nobody):
    p = nobody("-D", "127.0.0.1", "-t", "0.2", "-s", "1400", "raw")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == readme_line("`raw` without CAP_NET_RAW")


# RLIMIT_MEMLOCK, for a user without CAP_IPC_LOCK: the rings (on 6.18, as
# before 5.12), the registered buffer, and each zero-copy send's pinned pages
# all count against it. 16 KiB holds a ring of 8 entries, not one of 512,
# and never the 64 KiB payload.
MEMLOCK = 16 << 10


RINGS_CHARGED = kernel_at_least(6, 14) or not kernel_at_least(5, 12)   # ring memory against RLIMIT_MEMLOCK


def test_locked_memory_too_low_for_the_ring(nobody):
    if not RINGS_CHARGED:               # Debian's 6.1: the ring fits any limit, the buffer does not
        pytest.skip("rings count against RLIMIT_MEMLOCK before 5.12 and since 6.14, not on this kernel")
    with udp_sink_socket() as port:
        p = nobody("-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp", memlock=MEMLOCK)
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == readme_line("locked-memory limit too low for the ring")


def test_locked_memory_too_low_for_the_registered_buffer(nobody):
    with udp_sink_socket() as port:
        p = nobody("-D", "127.0.0.1", "-p", port, "-t", "0.2", "--entries", "8", "udp", memlock=MEMLOCK)
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == readme_line("... for the registered buffer")


def test_locked_memory_too_low_for_zero_copy_sends(nobody):
    with udp_sink_socket() as port:
        p = nobody("-D", "127.0.0.1", "-p", port, "-t", "0.2", "--entries", "8", "--no-fixed-buf",
                   "udp", memlock=MEMLOCK)
    assert (p.returncode, p.stdout) == (1, "")      # refused at the first send: no result to show
    assert only_line(p) == readme_line("... for zero-copy sends without a registered buffer")


# --- the peer is gone ------------------------------------------------------------

def test_tcp_refused_by_an_absent_receiver():
    port = free_port()
    p = tool("-D", "127.0.0.1", "-p", port, "-t", "0.2", "tcp")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == readme_line("TCP: no receiver", at("127.0.0.1", port))


def udp_refused_line(port):
    return readme_line("UDP: no receiver", at("127.0.0.1", port))


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
    assert only_line(p) == readme_line("TCP: the receiver stops reading, no reset", at("127.0.0.1", port))
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
    assert got == [row["bytes"] + hello_bytes(row)] and row["notifications"] == row["requests"] > 0


def hello_bytes(row):
    """The control line a TCP receiver that is not sendzc rx got before the data (its note says)."""
    return int(re.search(r"after the (\d+)-byte hello line", row["receiver_note"]).group(1))


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
        if ip("netns", "exec", ns, "sh", "-c", f"echo {value} > /proc/sys/net/core/optmem_max",
              check=False).returncode:      # Debian's 6.1: a namespace has no optmem_max of its own
            pytest.skip("net.core.optmem_max is per network namespace since 6.9; this kernel has none there")
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
    assert only_line(p) == readme_line("MSG_ZEROCOPY (`bench`): ENOBUFS with nothing outstanding")
    assert re.search(r"^send\(2\) MSG_ZEROCOPY .*\(failed\)( \(on CPU \d+%\))?$", p.stdout, re.M)


def test_enobufs_when_optmem_max_is_small_backs_off_and_says_so():
    with sink_with_optmem(1000) as ns:
        doc = bench_json("-D", SINK4, "-t", "0.2", "--batches", "8", ns=ns)
    row = next(r for r in doc["rows"] if r["mode"] == "msg_zerocopy")
    if row["enobufs"] == 0:
        pytest.skip("optmem_max 1000 leaves room for many completions on this kernel")
    assert row["error"] is None and row["requests"] > 0 and row["undrained"] == 0
    assert row["notifications"] == row["requests"]       # every send, retried, completed


# --- Ctrl-C ------------------------------------------------------------------------

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
    assert err.splitlines() == [readme_line("Ctrl-C")]


def test_ctrl_c_twice_stops_waiting_for_notifications():
    with stalled_listener() as listener:
        p = subprocess.Popen([sys.executable, TOOL, "-D", "127.0.0.1", "-p",
                              str(listener.getsockname()[1]), "-t", "30", "tcp"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)                            # stalled: sends wait in the kernel for room
        p.send_signal(signal.SIGINT)               # ends the run; the drain waits ...
        out, err, took = interrupt_timed(p, 0.3)   # ... no longer
    assert p.returncode == 130 and took < 2
    assert re.search(r"^warning: \d+ completions never came", out, re.M)
    assert err.splitlines() == [readme_line("Ctrl-C again")]


def test_ctrl_c_three_times_stops_at_once(capsys, monkeypatch):
    """Real SIGINTs to a run stuck where no loop looks at STOP (a stand-in for dispatch)."""
    def stuck(argv):
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        pytest.fail("the third Ctrl-C did not stop it")
    monkeypatch.setattr(sendzc, "dispatch", stuck)
    for name in ("requested", "hurry", "signum"):       # main() leaves STOP as the signals set it
        monkeypatch.setattr(sendzc.STOP, name, getattr(sendzc.STOP, name))
    assert main_in_process(capsys, "-D", "127.0.0.1", "udp") == (130, "", [readme_line("a third time")])


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
            m = readme_pattern("out of file descriptors", {"mmap.mmap() in Ring._map": "(.+)",
                                                           "10": r"(\d+)"}).fullmatch(only_line(p))
            assert m and int(m.group(2)) == n, p.stderr
            seen.add(m.group(1))
    # The ring fd itself, the fds Python's mmap dup()s of it, the probe's socketpair.
    assert "io_uring_setup" in seen and "mmap.mmap() in Ring._map" in seen, seen


# =============================================================================
# NET: UDP GSO, the path's MTU, bench --mtu, the private sink for every command (issue 11)
# =============================================================================

FRAGMENTING = ("sendzc: warning: each 65435-byte datagram leaves as 45 IP fragments on this path "
               "(MTU 1500), and the kernel copies every zero-copy send it fragments: add --gso auto "
               "to send it as 1472-byte UDP segments (UDP GSO), or give -s 1472 or less")


PLAIN_BUFFER_NOTE = "sendzc: note: --sendmsg sends from a plain buffer (as --no-fixed-buf): "


def warnings_but_plain_buffer_note(stderr):
    """stderr's lines less the one note a kernel before 6.15 adds for --sendmsg (it refuses
    SENDMSG_ZC from a registered buffer, so the tool sends from a plain one and says so): the
    same test then holds on 6.1 to 6.14 (.ci/kernels --pytest) and on this host."""
    return [line for line in stderr.splitlines() if not line.startswith(PLAIN_BUFFER_NOTE)]


@pytest.fixture(scope="module")
def sink1500():
    """A sink as above, but with the MTU of an ordinary network: a 64 KB datagram is 45 fragments."""
    yield from sink_namespace(1500)


@pytest.mark.parametrize("opts", [[], ["--sendmsg"]], ids=["send_zc", "sendmsg_zc"])
def test_fragmented_zero_copy_sends_are_copied_and_the_tool_names_gso(sink1500, opts):
    p = tool("--json", "-4", "-D", SINK4, "-t", "0.3", *opts, "udp", ns=sink1500)
    assert p.returncode == 0, p.stderr
    assert warnings_but_plain_buffer_note(p.stderr) == [FRAGMENTING]
    doc = json.loads(p.stdout)
    row = doc["rows"][0]
    assert row["requests"] > 0 and row["error"] is None and row["gso"] is None
    assert row["notifications"] == row["requests"] == row["zc_copied"]     # every one COPIED
    assert row["datagrams"] == row["requests"]                 # one datagram a send, fragmented
    assert doc["params"]["path_mtu"] == 1500 and doc["params"]["gso"] is None


@pytest.mark.parametrize("opts", [[], ["--sendmsg"], ["--no-fixed-buf"], ["--sendmsg", "--no-fixed-buf"]],
                         ids=["send_zc_fixed", "sendmsg_zc_fixed", "send_zc", "sendmsg_zc"])
def test_gso_auto_sends_zero_copy_across_an_mtu_of_1500(sink1500, opts):
    p = tool("--json", "-4", "-D", SINK4, "-t", "0.3", "--gso", "auto", *opts, "udp", ns=sink1500)
    assert p.returncode == 0 and warnings_but_plain_buffer_note(p.stderr) == [], p.stderr  # no warning
    doc = json.loads(p.stdout)
    row = doc["rows"][0]
    check_row(row, 65435)                                      # zc_copied == 0, notifications == requests
    assert row["zc_copied"] == 0 and row["gso"] == 1472
    assert row["datagrams"] == row["requests"] * 45            # 44 x 1472 + 667
    assert doc["params"]["gso"] == 1472 and doc["params"]["path_mtu"] == 1500


def test_gso_over_ipv6_picks_the_ipv6_segment(sink1500):
    row = tool_json("-6", "-D", SINK6, "-t", "0.3", "--gso", "auto", "udp", ns=sink1500)["rows"][0]
    check_row(row, 65435)
    assert row["gso"] == 1500 - 40 - 8 and row["zc_copied"] == 0


def test_gso_text_says_the_segment_and_the_datagrams(sink1500):
    p = tool("-4", "-D", SINK4, "-t", "0.3", "--gso", "1000", "-s", "65000", "udp", ns=sink1500)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    tx = int(p.stdout.split("tx=")[1].split()[0])
    assert f"gso: 1000-byte segments (UDP_SEGMENT), 65 datagrams per send: {tx * 65} datagrams in all" \
        in p.stdout.splitlines()


def test_the_seed_output_is_unchanged_when_nothing_fragments(sink):
    p = tool("-4", "-D", SINK4, "-t", "0.3", "udp", ns=sink)          # MTU 65535
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.splitlines()[0].startswith("tx=") and "gso" not in p.stdout


def test_a_gso_payload_is_the_pattern_from_a_in_every_segment():
    payload = sendzc.Payload(4000, 1472)
    try:
        data = bytes(payload.map[:4000])
        for start in range(0, 4000, 1472):
            seg = data[start:start + 1472]
            assert seg == sendzc.pattern(len(seg))
    finally:
        payload.close()


@pytest.mark.parametrize("opts,rx_opts", [((), ()), (("-f",), ()), (("--pool", "64"), ("--pool",))],
                         ids=["hot loop", "general loop", "reference sender"])
def test_t_is_kept_when_a_shaping_qdisc_holds_every_send(pair, opts, rx_opts):
    """-t 1 over veth with a 5 Mbit/s token bucket whose queue outgrows the socket buffer.

    Every send waits for room in the socket (never EAGAIN, never dropped), a
    batch of 256 x 1400 B for ~0.57 s; the run still ends within ~0.2 s of
    -t: each wait is bounded (ENTER_WAIT_NS) and the clock is read before it.
    The drain after it waits for the queue to empty (the notifications), not timed.
    """
    txns, rxns = pair
    port = 8100 + next(_names)
    ip("netns", "exec", txns, "tc", "qdisc", "replace", "dev", "szta", "root",
       "tbf", "rate", "5mbit", "burst", "32kb", "limit", "16mb")
    try:
        rx = start_rx("-4", "-p", port, *rx_opts, "udp", ns=rxns)
        started = time.monotonic()
        tx = tool_json("-4", "-D", PAIR4[1], "-p", port, "-t", "1", "-s", "1400", "-r", "256", *opts,
                       "udp", ns=txns)
        took = time.monotonic() - started
        status, got, err = finish_rx(rx)
    finally:
        ip("netns", "exec", txns, "tc", "qdisc", "del", "dev", "szta", "root", check=False)
    row = tx["rows"][0]
    assert 1.0 <= row["seconds"] < 1.25, row        # the run: -t 1, plus at most one bounded wait
    assert row["requests"] == row["notifications"] > 0 and row["undrained"] == 0
    assert took < 1.25 + sendzc.DRAIN_SECONDS + 3   # and the drain is bounded too
    # The drain is the time the qdisc still held what the socket had taken: the
    # hot loop leaves a socket buffer's worth queued (seconds at 5 Mbit/s), and
    # the report says so rather than pass the socket's rate off as the wire's;
    # -f and --pool wait for their notifications inside the run, so little.
    assert 0 < row["drain_s"] < took - row["seconds"], row
    assert (row["drain_s"] > 1.0) == (opts == ()), row
    assert status == 0, err


def test_a_long_drain_gets_its_note_and_a_short_one_none():
    def notes(drain_s, undrained=0):
        r = sendzc.Result("send_zc_fixed", "udp", 1400, 256, requests=1536, bytes=1536 * 1400, seconds=1.09,
                          notifications=1536 - undrained, drain_s=drain_s, undrained=undrained)
        return [line for line in sendzc.describe_result(r) if line.startswith(("note:", "warning:"))]
    assert notes(2.93) == ["note: after the run the kernel held the buffer 2.9 s more, until the path (a "
                           "shaping qdisc, a slow link or receiver) let go of sends it had taken: MB/s is "
                           "the rate the socket took them at; a receiver's figure is the wire's"]
    assert notes(0.2) == []
    assert [n[:8] for n in notes(5.0, undrained=3)] == ["warning:"]   # what never came says it instead


def test_gso_into_rx_over_veth_every_datagram_verified_and_counted(pair):
    """Over veth at MTU 1500: every GSO segment arrives as a datagram rx checks, each the pattern from 'a'."""
    txns, rxns = pair
    port = 8100 + next(_names)
    # Paced, so that nothing is dropped anywhere: a token bucket on the sending
    # side whose queue (limit) outgrows the socket's send buffer, so the sender
    # waits for room instead of the qdisc dropping (and veth's backlog, which no
    # receiver can count, never fills). Then the counts must agree exactly.
    ip("netns", "exec", txns, "tc", "qdisc", "replace", "dev", "szta", "root",
       "tbf", "rate", "200mbit", "burst", "128kb", "limit", "16mb")
    try:
        rx = start_rx("-4", "-p", port, "udp", ns=rxns)
        tx = tool_json("-4", "-D", PAIR4[1], "-p", port, "-t", "0.3", "--gso", "1472", "udp", ns=txns)
        status, doc, err = finish_rx(rx)
    finally:
        ip("netns", "exec", txns, "tc", "qdisc", "del", "dev", "szta", "root", check=False)
    assert status == 0, err
    got, sent = doc["rows"][0], tx["rows"][0]
    assert sent["gso"] == 1472 and sent["datagrams"] == sent["requests"] * 45 > 0
    assert got["verified"] is True and got["mismatches"] == 0
    assert got["dropped"] == 0
    assert got["datagrams"] == sent["datagrams"]


# --- the refusals -------------------------------------------------------------------

def test_gso_larger_than_the_path_is_refused_in_one_line(sink1500):
    p = tool("-4", "-D", SINK4, "-t", "0.3", "--gso", "1473", "udp", ns=sink1500)
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == readme_line("`--gso` larger than the path allows")


@needs_root
def test_gso_auto_on_a_tiny_mtu_is_too_many_segments():
    before = host_net()
    p = tool("-t", "0.3", "--mtu", "68", "--gso", "auto", "udp")      # 68 - 28 = 40-byte segments
    assert (p.returncode, p.stderr.count("\n")) == (1, 1), p.stderr
    assert p.stderr.splitlines() == [readme_line("`--gso auto` on a path so small")]
    assert_host_unchanged(before)


# Answers setsockopt(fd, SOL_UDP, UDP_SEGMENT, ...) with an errno and nothing
# else, as a kernel before 4.18 would (it knows no UDP_SEGMENT): seccomp looks
# at the call's level and optname (the low 32 bits of args[1] and args[2]).
SECCOMP_SETSOCKOPT = seccomp_script("""
    SOL_UDP, UDP_SEGMENT = 17, 103
    program = [
        (BPF_LD_W_ABS, 0, 0, 0),                   # seccomp_data.nr
        (BPF_JEQ_K, 0, 5, NR_SETSOCKOPT),
        (BPF_LD_W_ABS, 0, 0, 24),                  # args[1], low half: level
        (BPF_JEQ_K, 0, 3, SOL_UDP),
        (BPF_LD_W_ABS, 0, 0, 32),                  # args[2], low half: optname
        (BPF_JEQ_K, 0, 1, UDP_SEGMENT),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOPROTOOPT),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
""", argv_from=1)


def test_a_kernel_without_udp_gso_is_refused_in_one_line():
    if os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip("the filter knows the setsockopt numbers of x86_64 and aarch64 only")
    with udp_sink_socket() as port:
        p = subprocess.run([sys.executable, "-c", SECCOMP_SETSOCKOPT, TOOL, "-D", "127.0.0.1",
                            "-p", str(port), "-t", "0.2", "-s", "1400", "--gso", "1000", "udp"],
                           capture_output=True, text=True, timeout=30)
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == readme_line("a kernel without UDP GSO")


def test_eio_from_a_gso_send_is_one_line():
    """A unit test: this kernel (6.18) sends GSO even from a device with checksums and SG off."""
    cfg = sendzc.SendConfig(addr="198.18.0.2", gso=1472)
    assert "sendzc: " + sendzc.send_error(errno.EIO, cfg) == readme_line("a GSO send answered EIO")
    assert sendzc.send_error(errno.EIO, sendzc.SendConfig(addr="198.18.0.2")) != \
        sendzc.gso_eio_error()                                    # without --gso it is not GSO's


def test_einval_from_a_gso_send_names_the_older_kernels_limit():
    """A unit test: 6.18 takes 128 segments, so 66 cannot be refused here."""
    cfg = sendzc.SendConfig(addr="198.18.0.2", gso=1000)
    line = readme_line("a GSO send answered EINVAL")
    assert "sendzc: " + sendzc.send_error(errno.EINVAL, cfg) == line


# --- the private sink, for the sender -----------------------------------------------

@needs_root
def test_a_sender_with_no_d_runs_into_the_private_sink_and_says_so_first():
    before = host_net()
    p = tool("-t", "0.3", "--trace", "2", "udp")
    if "no ifb device" in p.stderr:
        pytest.skip(p.stderr.strip())
    assert p.returncode == 0 and p.stderr == "", p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("sink: no -D, so this sends to 198.18.0.2 through ifb0 in a network "
                               "namespace of its own (MTU 65535, qdisc noqueue)")
    assert sum(l.startswith("trace: SQE ") for l in lines) == 2
    assert any(l.startswith("zero-copy: all ") for l in lines)
    assert_host_unchanged(before)
    doc = tool_json("--sink", "-t", "0.2", "--mtu", "1500", "--gso", "auto", "udp")
    assert doc["params"]["sink"] == {"dev": "ifb0", "mtu": 1500, "qdisc": "noqueue", "netns": "private"}
    check_row(doc["rows"][0], 65435)
    assert doc["rows"][0]["zc_copied"] == 0 and doc["rows"][0]["gso"] == 1472
    assert_host_unchanged(before)


@pytest.mark.parametrize("how", ["error", "sigkill"])
@needs_root
def test_a_sender_into_the_private_sink_leaves_the_host_as_it_found_it(how):
    before = host_net()
    if how == "error":
        # Refused after the namespace and its device exist: the segment does not fit MTU 1500.
        p = tool("-t", "0.3", "--mtu", "1500", "--gso", "1473", "udp")
        assert (p.returncode, p.stdout.count("\n")) == (1, 1), p.stderr    # the sink line, then no run
        assert only_line(p) == readme_line("`--gso` larger than the path allows")
    else:
        proc = subprocess.Popen([sys.executable, TOOL, "-t", "5", "--trace", "2", "udp"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline()             # printed once the sink is up
            assert first.startswith("sink: no -D"), proc.communicate()[1]
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == -signal.SIGKILL
    assert_host_unchanged(before)


def test_a_sender_with_no_d_and_no_root_says_so_in_one_line():
    p = tool_without_capabilities("-t", "0.1", "udp")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == readme_line("the private sink for a sender")


# --- bench --mtu ---------------------------------------------------------------------

@needs_root
def test_bench_at_mtu_1500_sets_fragmented_against_gso_against_1472_byte_datagrams():
    before = host_net()
    doc = bench_json("--mtu", "1500", "-t", "0.2", "--batches", "8")
    assert_host_unchanged(before)
    assert doc["params"]["mtu"] == 1500 and doc["params"]["gso"] == 1472
    assert doc["params"]["sink"]["mtu"] == 1500 and doc["params"]["sizes"] == [1472, 65435]
    plan = sendzc.bench_config(sendzc.bench_parser().parse_args(["--batches", "8"])).plan()
    modes = [mode for mode, _ in plan]
    assert [(r["size"], r["gso"], r["mode"]) for r in doc["rows"]] == [
        (size, gso, mode) for size, gso in ((1472, None), (65435, None), (65435, 1472)) for mode in modes]
    for r in doc["rows"]:
        assert r["bytes"] == r["requests"] * r["size"] > 0 and r["error"] is None
        if r["mode"] in ZC_MODES:
            assert r["notifications"] == r["requests"]
            fragmented = r["size"] > 1472 and r["gso"] is None
            assert r["zc_copied"] == (r["notifications"] if fragmented else 0), r
        assert r["datagrams"] == r["requests"] * (45 if r["gso"] else 1)
    for (size, gso) in ((1472, None), (65435, None), (65435, 1472)):   # each table its own baseline
        base = [r for r in doc["rows"] if (r["size"], r["gso"], r["mode"]) == (size, gso, sendzc.BASELINE_MODE)]
        assert base[0]["speedup"] == 1.0
    assert set(doc["crossover"]) == {"io_uring", "msg_zerocopy"}


@needs_root
def test_bench_at_mtu_1500_marks_the_tables():
    p = tool("bench", "--mtu", "1500", "-t", "0.2", "--batches", "8")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    heads = [l for l in lines if " B per send" in l]
    assert heads == ["1472 B per send",
                     "65435 B per send, fragmented: 45 IP fragments each at MTU 1500",
                     "65435 B per send, UDP GSO: 1472-byte segments, 45 datagrams per send"]
    zero_copy = ("send(2) MSG_ZEROCOPY", "MSG_ZEROCOPY, poll() per send", "io_uring SEND_ZC")
    fragmented = [l for l in lines[lines.index(heads[1]):lines.index(heads[2])] if l.startswith(zero_copy)]
    with_gso = [l for l in lines[lines.index(heads[2]):] if l.startswith(zero_copy)]
    plan = sendzc.bench_config(sendzc.bench_parser().parse_args(["--batches", "8"])).plan()
    assert len(fragmented) == len(with_gso) == sum(mode in ZC_MODES for mode, _ in plan) >= 3
    assert all("  COPIED 100% " in l for l in fragmented)
    assert all("  yes " in l for l in with_gso)
    assert "where zero-copy starts to pay on this host" in p.stdout

# === RX (issues 11.5, 13.1, 13.7, 13.8, 13.16, 14.2, 15.2): the receiver =====
#
# UDP_GRO receives verified datagram by datagram, rx -n reading each flow from
# its accept, the method and note of a fallback named for every flow, -i that
# stops at the last datagram, a persistent receiver (--keep) and --discard.
# =============================================================================

UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)     # <linux/udp.h>
GSO_SEG, GSO_SEGS, GSO_TAIL = 1472, 45, 100   # a segment for MTU 1500; segments a send; the last's size

# A UDP GSO sender: every send is GSO_SEGS - 1 segments of SEG bytes and a
# short last one, each the pattern from 'a' (what a GSO sender must put on
# the wire for rx to verify it); in send 3 one byte may be flipped. Paced, so
# a receiver's buffer never fills: what it counts is then exactly what left.
GSO_SENDER = textwrap.dedent("""
    import socket, sys, time
    sys.path.insert(0, sys.argv[1])
    from sendzc import pattern
    host, port, sends, seg, segs, tail, flip = sys.argv[2], int(sys.argv[3]), *map(int, sys.argv[4:9])
    one = pattern(seg) * (segs - 1) + pattern(tail)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_UDP, %d, seg)              # UDP_SEGMENT
        s.connect((host, port))
        for i in range(sends):
            data = bytearray(one)
            if i == 3 and flip >= 0:
                data[flip] ^= 0x20
            s.send(data)
            time.sleep(0.002)
    print(len(one))
""" % UDP_SEGMENT)


def gso_send(host, port, sends, flip=-1, ns=None, segs=GSO_SEGS):
    """Run GSO_SENDER; returns the bytes of one send."""
    cmd = [sys.executable, "-c", GSO_SENDER, HERE, host, str(port), str(sends), str(GSO_SEG),
           str(segs), str(GSO_TAIL), str(flip)]
    p = subprocess.run((["ip", "netns", "exec", ns] if ns else []) + cmd,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return int(p.stdout)


def veth_mtu(ns, dev):
    return json.loads(ip("-n", ns, "-j", "link", "show", dev).stdout)[0]["mtu"]


def test_rx_udp_gro_verifies_every_segment_of_gso_sends(pair):
    txns, rxns = pair
    assert veth_mtu(rxns, "sztb") == 1500 and veth_mtu(txns, "szta") == 1500
    port = 8100 + next(_names)
    rx = start_rx("-4", "-p", port, "udp", ns=rxns)
    size = gso_send(PAIR4[1], port, 100, ns=txns)
    status, doc, err = finish_rx(rx)
    assert status == 0, err
    row = doc["rows"][0]
    assert row["method"] == "recvmsg UDP_GRO" and row["gro_segment"] == GSO_SEG
    assert row["verified"] is True and row["mismatches"] == 0 and row["first_mismatch"] is None
    assert row["receives"] < row["datagrams"]              # coalesced: many datagrams a receive
    assert row["dropped"] is not None
    if row["dropped"] == 0:                                # the counts of both sides reconcile
        assert row["datagrams"] == 100 * GSO_SEGS and row["bytes"] == 100 * size
    else:                                                  # (a drop is a coalesced packet: <= 45 each)
        assert row["datagrams"] < 100 * GSO_SEGS


def test_rx_udp_gro_catches_a_corrupted_segment_at_its_offset(pair):
    txns, rxns = pair
    port = 8100 + next(_names)
    rx = start_rx("-4", "-p", port, "udp", ns=rxns)
    gso_send(PAIR4[1], port, 10, flip=7 * GSO_SEG + 5, ns=txns)   # send 3, its segment 7, byte 5
    status, doc, err = finish_rx(rx)
    assert status == 1
    row = doc["rows"][0]
    expected = sendzc.PATTERN[5]
    assert row["verified"] is False and row["mismatches"] == 1
    assert row["first_mismatch"] == {"offset": 5, "datagram": 3 * GSO_SEGS + 7,
                                     "got": expected ^ 0x20, "expected": expected}
    assert row["datagrams"] == 10 * GSO_SEGS
    assert one_line(err).startswith(
        f"sendzc: rx: verification failed: byte 5 of datagram {3 * GSO_SEGS + 7} (both counted "
        f"from 0) is {expected ^ 0x20:#04x} where the pattern has {expected:#04x} "
        f"{chr(expected)!r} (1 of {10 * GSO_SEGS} datagrams differ)")


@pytest.mark.parametrize("flips", [[], [5], [3000, 3001], [1472 * 3 + 1471, 1472 * 4 + 99]])
def test_the_verifier_checks_each_coalesced_datagram(flips):
    """One receive of 5 datagrams (the last short): each wrong one counted, the first placed."""
    v = sendzc.Verifier(1 << 20)
    data = bytearray(sendzc.pattern(1472) * 4 + sendzc.pattern(100))
    for at in flips:
        data[at] ^= 1
    v.datagrams(memoryview(data), len(data), 1472, 10)
    assert v.bad == len({at // 1472 for at in flips})
    if flips:
        at = flips[0]
        assert v.first == {"offset": at % 1472, "datagram": 10 + at // 1472, "got": data[at],
                           "expected": sendzc.PATTERN[at % 1472 % 26]}


def start_rx_args(*args, ns=None, prefix=(sys.executable, TOOL)):
    """`sendzc.py rx ARGS` (no --json added), returned once it is listening, and its waiting line."""
    cmd = [*prefix, "rx", *map(str, args)]
    p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd] if ns else cmd,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    if "waiting for" not in line:
        p.kill()
        pytest.fail(f"rx did not start: {line}{p.communicate()[1]}")
    return p, line


@pytest.mark.parametrize("size", [100000, 32 << 20], ids=["fits-the-buffers", "32MiB"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_rx_n_reads_each_flow_from_its_accept_and_ctrl_c_reports_the_flows_that_came(as_json, size):
    """rx -n 2, one sender comes: it is read at once (32 MiB pass no socket buffers unread);
    Ctrl-C then prints that flow, whole, and the total: no traceback, exit 130."""
    port = free_port()
    rx, _ = start_rx_args(*(["--json"] if as_json else []), "-4", "-p", port, "-n", "2", "tcp")
    with reaped(rx):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10)                   # an rx that does not read stalls this sendall
            s.sendall(sendzc.pattern(size))
        time.sleep(1)                          # rx reads the last bytes and the end of the stream
        out, err = ctrl_c(rx)
    assert err.splitlines() == [readme_line("Ctrl-C")]
    if as_json:
        doc = json.loads(out)
        [row] = doc["rows"]
        assert row["bytes"] == size and row["verified"] is True
        assert row["peer"].startswith("127.0.0.1:") and row["family"] == "ipv4"
        assert doc["total"]["bytes"] == size and doc["total"]["interrupted"] is True
    else:
        lines = out.splitlines()
        assert re.fullmatch(r"flow 0: tcp IPv4 io_uring RECV: \d+ MB/s .*", lines[0]), out
        assert lines[1] == "total of 1 flows:"
        assert f"({size >> 20} MB, {size} bytes)" in lines[2] and "from 127.0.0.1:" in lines[2]
        assert lines[-1] == "verified: every byte is the sender's pattern, in stream order"


def test_rx_n_without_io_uring_names_recv_into_and_says_why():
    """rx -n 2 under a seccomp filter refusing io_uring: every flow and the total say recv_into,
    and the fallback note is printed, as with one flow."""
    if os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip("the filter knows the io_uring syscall numbers of x86_64 and aarch64 only")
    port = free_port()
    rx, _ = start_rx_args("-4", "-p", port, "-n", "2", "tcp",
                          prefix=(sys.executable, "-c", SECCOMP_EXEC, "EPERM", TOOL))
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(sendzc.pattern(100000))
    out, err = rx.communicate(timeout=30)
    assert rx.returncode == 0, err
    lines = out.splitlines()
    assert [l.split(":")[0] for l in lines[:2]] == ["flow 0", "flow 1"]
    assert all(" tcp IPv4 recv_into: " in l for l in lines[:2]), out
    assert lines[2] == "total of 2 flows:"
    assert lines[4].startswith("tcp IPv4 recv_into: "), out
    assert lines[5].startswith("note: io_uring refused (io_uring_setup: EPERM"), out
    assert "(0 MB, 200000 bytes)" in lines[3]


def test_rx_udp_intervals_stop_at_the_last_datagram_and_never_run_backwards():
    port = free_port(socket.SOCK_DGRAM)
    rx = start_rx("-4", "-p", port, "-i", "0.1", "udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        until = time.monotonic() + 0.5
        sent = 0
        while time.monotonic() < until:
            s.send(sendzc.pattern(1400))
            sent += 1
            time.sleep(0.001)
    status, doc, err = finish_rx(rx)           # after RX_UDP_IDLE_S (1 s) of silence
    assert status == 0, err
    row = doc["rows"][0]
    ivs = row["intervals"]
    assert row["datagrams"] == sent and row["verified"] is True
    assert all(i["start"] <= i["end"] and i["mb_per_s"] >= 0 for i in ivs), ivs
    assert all(a["end"] == b["start"] for a, b in zip(ivs, ivs[1:])), ivs
    assert ivs[-1]["end"] <= round(row["seconds"], 3) + 0.001, (ivs[-1], row["seconds"])
    assert row["seconds"] < 0.9                # the last datagram, not the idle timeout
    assert sum(i["bytes"] for i in ivs) == row["bytes"]
    assert sum(i["requests"] for i in ivs) == row["datagrams"]


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_rx_interrupted_with_no_sender_names_no_family(proto):
    """The dual-stack socket had no sender: its family is nobody's, not "ipv4"."""
    rx = start_rx("-p", free_port(), proto)
    rx.send_signal(signal.SIGINT)
    status, doc, err = finish_rx(rx, timeout=5)
    assert status == 130
    assert doc["rows"][0]["family"] is None and doc["rows"][0]["peer"] == ""


def keep_rx(*args):
    """`sendzc.py rx --keep --json ARGS`, listening."""
    rx, line = start_rx_args("--keep", "--json", *args)
    assert "waiting for senders, one after another" in line
    return rx


def read_doc(rx):
    """rx --keep's next JSON line (it prints one as each sender ends)."""
    line = rx.stdout.readline()
    assert line.endswith("\n"), line
    return json.loads(line)


def stop_keep_rx(rx):
    """SIGINT: the totals document and exit 130."""
    out, err = ctrl_c(rx)
    assert err.splitlines() == [readme_line("Ctrl-C")]
    [line] = out.splitlines()
    return json.loads(line)


def test_rx_keep_serves_two_tcp_senders_in_a_row_then_ctrl_c_prints_the_totals():
    port = free_port()
    rx = keep_rx("-4", "-p", port, "tcp")
    with reaped(rx):
        sent, got = [], []
        for _ in range(2):
            tx = tool_json("-D", "127.0.0.1", "-p", port, "-t", "0.3", "-s", "10000", "tcp")
            sent.append(tx["rows"][0]["bytes"])
            got.append(read_doc(rx))
        totals = stop_keep_rx(rx)
    for n, (doc, nbytes) in enumerate(zip(got, sent), 1):
        check_against_readme(doc, "### The JSON document", options=["each rx `--keep`"])
        [row] = doc["rows"]
        check_against_readme(row, "### An rx JSON row")
        # Each stream is checked from its own first byte ('a'): nothing carries over.
        assert doc["sender"] == n and row["bytes"] == nbytes > 0 and row["verified"] is True
        assert row["interrupted"] is False and row["error"] is None
    assert got[0]["rows"][0]["peer"] != got[1]["rows"][0]["peer"]
    check_against_readme(totals, "### The JSON document", options=["`--keep`'s last"])
    assert totals["rows"] == [] and totals["senders"] == 2
    assert totals["total"]["bytes"] == sum(sent) and totals["total"]["verified"] is True
    assert totals["total"]["interrupted"] is True


def test_rx_keep_serves_udp_senders_one_after_another_in_text():
    """A plain UDP sender, then (after the idle gap) a GSO one: each counted from zero."""
    port = free_port(socket.SOCK_DGRAM)
    rx, line = start_rx_args("--keep", "-4", "-p", port, "udp")
    assert "waiting for senders, one after another" in line
    with reaped(rx):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("127.0.0.1", port))
            for _ in range(100):
                s.send(sendzc.pattern(1000))
                time.sleep(0.001)
        first = [rx.stdout.readline() for _ in range(4)]
        size = gso_send("127.0.0.1", port, 20)
        second = [rx.stdout.readline() for _ in range(4)]
        out, err = ctrl_c(rx)
    assert first[0] == "sender 1:\n" and second[0] == "sender 2:\n"
    assert first[1].startswith("rx=100 datagrams (0 MB, 100000 bytes) from 127.0.0.1:"), first
    assert first[1].endswith("; 0 dropped by the full socket buffer\n")
    assert first[3] == "verified: all 100 datagrams are the sender's pattern, intact\n"
    assert second[1].startswith(f"rx={20 * GSO_SEGS} datagrams (1 MB, {20 * size} bytes) in "), second
    assert f"(UDP_GRO coalesced them, {GSO_SEG} B segments)" in second[1]
    assert second[3] == f"verified: all {20 * GSO_SEGS} datagrams are the sender's pattern, intact\n"
    assert out == (f"total: 2 senders, 1 MB ({100000 + 20 * size} bytes), {100 + 20 * GSO_SEGS} "
                   f"datagrams; every one verified\n")


@pytest.mark.parametrize("opts,method", [([], "io_uring RECV"), (["--no-uring"], "recv_into")],
                         ids=["uring", "recv_into"])
def test_rx_discard_counts_exactly_the_bytes_the_tcp_sender_sent(opts, method):
    port = free_port()
    rx = start_rx("-4", "-p", port, "--discard", *opts, "tcp")
    tx = tool_json("-D", "127.0.0.1", "-p", port, "-t", "0.3", "tcp")
    status, doc, err = finish_rx(rx)
    assert status == 0, err
    row = doc["rows"][0]
    assert row["bytes"] == tx["rows"][0]["bytes"] > 0
    assert row["method"] == method and row["discard"] is True and doc["params"]["discard"] is True
    assert row["verified"] is None and row["mismatches"] == 0
    check_against_readme(row, "### An rx JSON row")


def test_rx_discard_counts_udp_datagrams_and_says_nothing_was_verified():
    port = free_port(socket.SOCK_DGRAM)
    rx, _ = start_rx_args("-4", "-p", port, "--discard", "udp")
    size = gso_send("127.0.0.1", port, 20, flip=3)          # a wrong byte: nobody looks
    out, err = rx.communicate(timeout=30)
    assert rx.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"rx={20 * GSO_SEGS} datagrams (1 MB, {20 * size} bytes) in ")
    assert lines[-1] == ("verification: off (--discard: MSG_TRUNC receives, the kernel dropped "
                         "the data without copying it to us)")


@pytest.mark.parametrize("uring", [True, False], ids=["uring", "recv_into"])
def test_a_discarding_tcp_receiver_never_writes_the_buffer(uring):
    """MSG_TRUNC on TCP: every byte counted, none copied to user space."""
    with socket.socket() as listener, contextlib.ExitStack() as stack:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
        stack.enter_context(a)
        stack.enter_context(b)
        buf = sendzc.RxBuffer(1 << 16)
        stack.callback(buf.close)
        rx = (sendzc.UringReceiver(b, buf, stack, socket.MSG_TRUNC) if uring
              else sendzc.SocketReceiver(b, buf, socket.MSG_TRUNC))
        a.sendall(sendzc.pattern(300000))
        a.close()
        total = 0
        while True:
            k = rx.recv()
            if k == 0:
                break
            total += k or 0
        assert total == 300000 and not any(buf.view)


def test_rx_json_matches_the_fields_readme_documents():
    port = free_port()
    rx = start_rx("-4", "-p", port, "-i", "0.1", "tcp")
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(sendzc.pattern(100000))
    status, doc, err = finish_rx(rx)
    assert status == 0, err
    check_against_readme(doc, "### The JSON document")
    check_against_readme(doc["rows"][0], "### An rx JSON row", options=["-i"])
    port = free_port()
    rx = start_rx("-4", "-p", port, "-n", "2", "tcp")
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(sendzc.pattern(1000))
    status, doc, err = finish_rx(rx)
    assert status == 0, err
    check_against_readme(doc, "### The JSON document", options=["rx -n"])
    for row in doc["rows"] + [doc["total"]]:
        check_against_readme(row, "### An rx JSON row")


def test_a_whole_udp_gro_receive_releases_every_fd_and_mapping():
    def once():
        port = free_port(socket.SOCK_DGRAM)
        cfg = sendzc.RxConfig(proto="udp", family=socket.AF_INET, port=port)

        def sender():
            time.sleep(0.3)                           # the receiver binds meanwhile
            gso_send("127.0.0.1", port, 5)
        t = threading.Thread(target=sender)
        t.start()
        result = receive_once(cfg)
        t.join()
        assert result.datagrams == 5 * GSO_SEGS and result.verified is True
        assert result.method == "recvmsg UDP_GRO" and result.gro_segment == GSO_SEG
    once()                                            # warm up imports and caches
    fds, maps = open_fds(), mappings()
    once()
    assert (open_fds(), mappings()) == (fds, maps)


def test_rx_keep_goes_on_after_a_failed_sender_and_the_next_starts_clean():
    """A sender with a flipped byte fails its check (its line on stderr); the next one, sent
    right, passes: no mismatch, phase or count carries over. The totals say 1 of 2 failed."""
    port = free_port()
    rx = keep_rx("-4", "-p", port, "tcp")
    with reaped(rx):
        bad = subprocess.run([sys.executable, "-c", FLIPPER, HERE, "tcp", "127.0.0.1", str(port),
                              "1000003"], capture_output=True, text=True, timeout=30)
        assert bad.returncode == 0, bad.stderr
        first = read_doc(rx)
        assert rx.stderr.readline().startswith(
            "sendzc: rx: verification failed: stream byte 1000003 ")
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(sendzc.pattern(777777))
        second = read_doc(rx)
        totals = stop_keep_rx(rx)
    assert first["rows"][0]["verified"] is False and first["rows"][0]["mismatches"] == 1
    row = second["rows"][0]
    assert row["bytes"] == 777777 and row["verified"] is True and row["mismatches"] == 0
    assert row["first_mismatch"] is None and row["error"] is None
    assert totals["senders"] == 2 and totals["total"]["verified"] is False
    assert totals["total"]["bytes"] == (4 << 20) + 777777


# === TUT (issue 12): a zero-copy send, one CQE at a time ======================
#
# The reference sender (section 6), --pool and --break-contract against a
# receiver behind a token-bucket qdisc, and the differential test: the
# reference and the fast sender on the same input report the same counts.

def test_the_flag_predicates_read_a_real_send_zc():
    """more() then notif() on the two CQEs of one SEND_ZC; copied() only on a copy."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, sendzc.Ring(4) as ring:
        sqe = sendzc.io_uring_sqe()
        sendzc.prep_send_zc(sqe, a.fileno(), sendzc.probe_byte_addr(), 1, 0, 0)
        sqe.user_data = 7
        ring.place(bytes(sqe))
        ring.submit_and_wait(1)
        seen = []
        while len(seen) < 2:
            cqe = ring.peek_cqe()
            if cqe is None:
                assert ring.wait_cqes(1, 1.0)
                continue
            seen.append(cqe)
            ring.cqe_seen()
        assert ring.peek_cqe() is None
    (ud1, res1, f1), (ud2, res2, f2) = seen
    assert ud1 == ud2 == 7
    assert sendzc.more(f1) and not sendzc.notif(f1) and res1 == -errno.EOPNOTSUPP
    assert sendzc.notif(f2) and not sendzc.more(f2) and not sendzc.copied(res2)
    assert sendzc.copied(sendzc.NOTIF_COPIED_RES) and not sendzc.copied(0)


def test_a_full_submission_queue_is_refused_by_name():
    with sendzc.Ring(4) as ring:
        nop = sendzc.io_uring_sqe()
        sendzc.prep_nop(nop)
        ring.place(bytes(nop) * 3)
        with pytest.raises(sendzc.SubmissionQueueFull, match="2 SQEs do not fit: 1 of 4 slots free"):
            ring.place(bytes(nop) * 2)
        assert ring.sq_tail == 3                     # nothing of the refused batch went in
        ring.place(bytes(nop))
        ring.submit_and_wait(4)
        assert ring.cq_ready() == 4


def pretend_kernel_lacks(monkeypatch, feature):
    """io_uring_setup() as on a kernel that does not report feature (an IORING_FEAT_* bit)."""
    real = sendzc.io_uring_setup

    def old_kernel(entries, params):
        fd = real(entries, params)
        params.features &= ~feature
        return fd
    monkeypatch.setattr(sendzc, "io_uring_setup", old_kernel)


def test_a_kernel_without_the_features_ring_needs_is_refused_in_one_line(monkeypatch):
    pretend_kernel_lacks(monkeypatch, sendzc.IORING_FEAT_EXT_ARG)
    fds = open_fds()
    with pytest.raises(sendzc.Fatal) as e:
        sendzc.Ring(4)
    assert f"sendzc: {e.value}" == readme_line("a kernel without `IORING_FEAT_EXT_ARG`",
                                               {"5.4.0": os.uname().release})
    assert open_fds() == fds                          # the ring fd was closed on the way out


def test_stamps_name_their_request_in_every_16_bytes():
    s = sendzc.stamp(5, 40)
    assert len(s) == 40 and s[:16] == s[16:32] == sendzc.STAMP.pack(5, 40) and s[32:] == s[:8]
    assert sendzc.unpack_user_data(sendzc.pack_user_data(123456, 3)) == (123456, 3)


def test_the_pool_verifier_names_the_first_byte_of_a_later_stamp():
    size = 100
    stream = bytearray(b"".join(sendzc.stamp(q, size) for q in range(6)))
    stream[250:300] = sendzc.stamp(6, size)[50:100]    # request 2's second half: request 6's bytes
    v = sendzc.PoolVerifier("tcp")
    for at in range(0, len(stream), 7):             # receives of 7 bytes, as receive() calls it
        if not v.matches(memoryview(stream)[at:at + 7], 0):
            v.mismatch(None, 0, 0, at, None)
    assert v.checked == len(stream) and v.bad >= 1
    # Byte 264 is the first that differs: request 2's byte 64, the low byte of its sequence number.
    assert v.first == {"offset": 264, "datagram": None, "got": 6, "expected": 2, "request": 2}
    u = sendzc.PoolVerifier("udp")
    assert u.matches(memoryview(sendzc.stamp(4, 64)), 0)
    assert u.matches(memoryview(sendzc.stamp(2, 64)), 0)              # out of order: UDP may
    assert not u.matches(memoryview(sendzc.stamp(4, 64)), 0)          # twice: never
    assert u.why == {"offset": 0, "datagram": 2, "got": 4, "expected": 5, "request": 4, "previous": 0}
    torn = bytearray(sendzc.stamp(9, 64))
    torn[32:40] = sendzc.stamp(13, 64)[32:40]        # the third stamp's sequence number
    assert not u.matches(memoryview(bytes(torn)), 0)
    assert u.why == {"offset": 32, "datagram": 3, "got": 13, "expected": 9, "request": 9}


def pool_run(count=0, **kw):
    """One in-process reference run to a UDP socket on loopback that nobody reads."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        cfg = sendzc.SendConfig(proto="udp", addr="127.0.0.1", port=rx.getsockname()[1],
                                size=1400, seconds=0.2, pool=4, **kw)
        with contextlib.ExitStack() as stack:
            sock = sendzc.open_tx_socket("udp", socket.AF_INET, cfg.addr, cfg.port)
            stack.callback(sock.close)
            return sendzc.run_reference(cfg, sock, stack, count)


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed", "not-fixed"])
def test_the_reference_sender_accounts_for_every_notification_and_leaks_nothing(fixed):
    pool_run(fixed_buf=fixed)                        # warm up imports and caches
    fds, maps = open_fds(), mappings()
    r = pool_run(count=1000, fixed_buf=fixed)
    assert (open_fds(), mappings()) == (fds, maps)   # the pool was unmapped: nothing owed
    assert r.error is None and r.undrained == 0 and r.failed == 0
    assert r.requests == r.notifications == 1000 and r.bytes == 1000 * 1400
    p = r.pool
    assert p["lag_samples"] == 1000 and p["rewritten_early"] == 0
    assert 0 < p["lag_ms"]["min"] <= p["lag_ms"]["p50"] <= p["lag_ms"]["p99"] <= p["lag_ms"]["max"]
    assert 1400 <= p["pinned_max_bytes"] <= 4 * 1400 and p["buffers_needed"] >= 1


@pytest.mark.parametrize("kw", [{}, {"flush": True}, {"zc": False}], ids=["hot", "general", "copy"])
def test_the_fast_sender_samples_the_notification_lag(kw):
    """Issue 12 item 4 on the fast path: sampled lag, pinned bytes, pool size; none without zero-copy."""
    r = loopback_run(**kw)
    assert r.error is None and r.requests > 0
    if kw.get("zc") is False:
        assert r.notif_lag is None and "notif_lag" not in r.row()
        return
    lag = r.row()["notif_lag"]
    assert 0 < lag["lag_samples"] <= r.requests
    assert 0 < lag["lag_ms"]["min"] <= lag["lag_ms"]["p50"] <= lag["lag_ms"]["p99"] <= lag["lag_ms"]["max"]
    assert 1400 <= lag["pinned_max_bytes"] and lag["buffers_needed"] >= 1
    assert sendzc.describe_result(r)[-1].startswith(f"pool: at {r.mb_per_s:.0f} MB/s and a p99 lag of ")


def test_rx_flows_total_of_a_pool_run_names_the_stamps():
    """rx -n N --pool: the total's verdict is about stamps, as each flow's is, not the pattern."""
    cfg = sendzc.RxConfig(proto="tcp", flows=2, pool=True)
    flows = [sendzc.new_result(cfg) for _ in range(2)]
    for r in flows:
        r.peer, r.family, r.bytes, r.receives, r.verified = "198.18.1.1:1", "ipv4", 1 << 20, 10, True
    total = sendzc.add_up(cfg, flows)
    assert "verified: every byte is its request's stamp, requests in order" in sendzc.describe_rx(total)
    flows[1].verified, flows[1].mismatches = False, 3
    total = sendzc.add_up(cfg, flows)
    assert "verification FAILED: 3 of 20 receives differ from their requests' stamps" in sendzc.describe_rx(total)


def test_sender_pool_json_matches_the_fields_readme_documents():
    doc = tool_json_to_loopback("-t", "0.3", "-s", "1400", "--pool", "4", "udp")
    check_against_readme(doc, "### The JSON document")
    row = doc["rows"][0]
    check_against_readme(row, "### A JSON row", options=["--pool"])
    assert set(row["pool"]) == {"buffers", "break_contract", "rewritten_early", "lag_ms",
                                "lag_samples", "pinned_max_bytes", "buffers_needed"}
    assert row["pool"]["lag_samples"] == row["notifications"] == row["requests"] > 0
    assert doc["params"]["pool"] == 4 and doc["params"]["break_contract"] is False




@pytest.mark.parametrize("opt", ["--sendmsg", "-f", "--trace 2", "-n 2", "--sqpoll", "-i 1"])
def test_pool_refuses_the_options_of_the_fast_sender(opt):
    flag = opt.split()[0]
    p = tool("-D", "192.0.2.1", "--pool", "4", *opt.split(), "udp")
    assert (p.returncode, p.stdout) == (2, "")
    assert only_line(p) == readme_line("--pool with an option of the fast sender", {"--no-zc": flag})


# --- the contract, demonstrated: a queue that holds the packets ----------------

@pytest.fixture(scope="module")
def tbf_pair():
    """A veth pair whose sending side has a token bucket: packets wait in its queue.

    While they wait, their pages are still the sender's buffer (veth copies
    only on the receiving side), so a buffer rewritten before its F_NOTIF
    changes what the receiver gets.
    """
    if not IS_ROOT or not HAVE_IP or not shutil.which("tc"):
        pytest.skip("needs root, iproute2 and tc to create network namespaces")
    with netns() as tx, netns() as rx:
        ip("link", "add", "szta", "netns", tx, "type", "veth", "peer", "name", "sztb", "netns", rx)
        for ns, dev, a4 in ((tx, "szta", PAIR4[0]), (rx, "sztb", PAIR4[1])):
            ip("-n", ns, "addr", "add", f"{a4}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        made = subprocess.run(["ip", "netns", "exec", tx, "tc", "qdisc", "replace", "dev", "szta",
                               "root", "tbf", "rate", "100mbit", "burst", "32kb", "latency", "400ms"],
                              capture_output=True, text=True)
        if made.returncode:
            pytest.skip(f"no tbf qdisc here: {made.stderr.strip()}")
        yield tx, rx


POOL_SIZE = {"udp": 1400, "tcp": 65435}     # UDP below veth's MTU: a fragmented datagram is copied


def pool_run_over_tbf(tbf_pair, proto, *options):
    """`--pool 4` (and options) into `rx --pool` over the tbf veth: (the sender's process, finish_rx())."""
    txns, rxns = tbf_pair
    port = 8100 + next(_names)
    rx = start_rx("-4", "-p", port, "--pool", proto, ns=rxns)
    tx = tool("-4", "-D", PAIR4[1], "-p", port, "-t", "1", "-s", POOL_SIZE[proto],
              "--pool", "4", *options, proto, ns=txns)
    return tx, finish_rx(rx)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_pool_keeps_the_contract_and_rx_verifies_every_stamp(tbf_pair, proto):
    tx, (status, doc, err) = pool_run_over_tbf(tbf_pair, proto, "--json")
    assert tx.returncode == 0, tx.stderr
    assert status == 0, err
    sent, got = json.loads(tx.stdout)["rows"][0], doc["rows"][0]
    assert sent["error"] is None and sent["undrained"] == 0
    assert sent["notifications"] == sent["requests"] > 0 and sent["pool"]["rewritten_early"] == 0
    assert got["verified"] is True and got["mismatches"] == 0
    assert got["bytes"] == sent["bytes"]                  # no loss: 4 buffers never fill the queue
    assert doc["params"]["pool"] is True


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_break_contract_is_caught_by_rx_at_its_offset(tbf_pair, proto):
    tx, (status, doc, err) = pool_run_over_tbf(tbf_pair, proto, "--break-contract")
    # The sender hears rx's verdict over the control connection, and fails with rx's line.
    said = readme_pattern("the receiver's check failed", {"10.0.0.2": re.escape(PAIR4[1]), "8000": r"\d+",
                                                         "rx: verification failed: ...":
                                                         re.escape(doc["rows"][0]["error"])})
    assert tx.returncode == 1 and said.fullmatch(only_line(tx)), tx.stderr
    broke = re.search(r"^warning: --break-contract: (\d+) buffers were rewritten as soon as their "
                      r"send's result \(F_MORE\) came, before their notification \(F_NOTIF\): the "
                      r"rule broken is \"a zero-copy buffer is the kernel's until its F_NOTIF\"",
                      tx.stdout, re.M)
    assert broke and int(broke.group(1)) > 0, tx.stdout
    assert status == 1
    row = doc["rows"][0]
    assert row["verified"] is False and row["mismatches"] >= 1
    first = row["first_mismatch"]
    line = one_line(err)
    if proto == "tcp":
        # The exact stream is known: the first wrong byte, and whose it should be.
        assert first["datagram"] is None and first["request"] == first["offset"] // POOL_SIZE["tcp"]
        assert line.startswith(f"sendzc: rx: --pool verification failed: stream byte "
                               f"{first['offset']} is {first['got']:#04x} where request "
                               f"{first['request']}'s stamp has {first['expected']:#04x} (")
    else:
        assert first["datagram"] is not None and first["offset"] >= 0
        assert line.startswith("sendzc: rx: --pool verification failed: byte ")
    assert line.endswith("a buffer was rewritten while the kernel still held it, before its "
                         "notification (F_NOTIF)")


# --- the differential test: the reference and the fast sender agree -------------
#
# Same socket, same size, same number of requests: the fast sender runs for a
# short -t, and the reference sender then sends exactly as many requests as it
# did (run_reference's count). What each reports must match, field by field.

DIFF_SENDER = textwrap.dedent("""
    import contextlib, json, socket, sys
    sys.path.insert(0, sys.argv[1])
    import sendzc
    which, proto, addr, port, size, n = sys.argv[2], sys.argv[3], sys.argv[4], *map(int, sys.argv[5:8])
    cfg = sendzc.SendConfig(proto=proto, addr=addr, port=port, size=size, batch=4, pool=4,
                            seconds=n / 1000)
    with contextlib.ExitStack() as stack:
        sock = sendzc.open_tx_socket(proto, socket.AF_INET, addr, port)
        stack.callback(sock.close)
        if which == "fast":
            payload = sendzc.Payload(size)
            stack.callback(payload.close)
            result = sendzc.UringSender(cfg, sock, payload, stack).run()
        else:
            result = sendzc.run_reference(cfg, sock, stack, count=n)
    print(json.dumps(result.row()))
""")
AGREED = ("requests", "bytes", "notifications", "failed", "eagain", "undrained", "zc_copied", "error")


def diff_sender(ns, which, proto, addr, port, size, n):
    """One run of DIFF_SENDER in namespace ns: the fast sender for n ms, or the reference for n requests."""
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", DIFF_SENDER, HERE, which,
                        proto, addr, str(port), str(size), str(n)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_reference_and_fast_sender_agree_into_the_sink(sink):
    fast = diff_sender(sink, "fast", "udp", SINK4, 9, 65435, 300)
    ref = diff_sender(sink, "ref", "udp", SINK4, 9, 65435, fast["requests"])
    assert fast["requests"] > 0 and fast["error"] is None
    assert {k: ref[k] for k in AGREED} == {k: fast[k] for k in AGREED}
    assert ref["notifications"] == ref["requests"]


def test_reference_and_fast_sender_agree_over_veth_to_rx(pair):
    txns, rxns = pair
    port = 8100 + next(_names)
    rx = start_rx("-4", "-p", port, "tcp", ns=rxns)
    fast = diff_sender(txns, "fast", "tcp", PAIR4[1], port, 65435, 300)
    status, fast_rx, err = finish_rx(rx)
    assert status == 0, err
    rx = start_rx("-4", "-p", port, "--pool", "tcp", ns=rxns)
    ref = diff_sender(txns, "ref", "tcp", PAIR4[1], port, 65435, fast["requests"])
    status, ref_rx, err = finish_rx(rx)
    assert status == 0, err
    assert fast["requests"] > 0 and fast["error"] is None
    assert {k: ref[k] for k in AGREED} == {k: fast[k] for k in AGREED}
    for sent, got in ((fast, fast_rx["rows"][0]), (ref, ref_rx["rows"][0])):
        assert got["bytes"] == sent["bytes"] and got["verified"] is True


def test_reference_and_fast_sender_fail_alike_when_the_peer_is_gone():
    """UDP to a port nobody listens on: the ICMP comes back and a send fails with ECONNREFUSED.

    How many sends go out before the ICMP arrives is the kernel's timing, so
    the counts may differ; what each says must not: the same error line, a
    failure counted, and a notification for every request, failed ones too.
    """
    rows = []
    for which in ("fast", "ref"):
        port = free_port(socket.SOCK_DGRAM)
        cfg = sendzc.SendConfig(proto="udp", addr="127.0.0.1", port=port, size=1400, batch=4,
                                pool=4, seconds=2)
        with contextlib.ExitStack() as stack:
            sock = sendzc.open_tx_socket("udp", socket.AF_INET, cfg.addr, cfg.port)
            stack.callback(sock.close)
            if which == "fast":
                payload = sendzc.Payload(cfg.size)
                stack.callback(payload.close)
                r = sendzc.UringSender(cfg, sock, payload, stack).run()
            else:
                r = sendzc.run_reference(cfg, sock, stack, count=100000)
        assert f"sendzc: {r.error}" == udp_refused_line(port), which
        assert r.failed >= 1 and r.requests >= 1 and r.undrained == 0, which
        assert r.notifications == r.requests + r.failed + r.eagain, which
        rows.append(r)
    assert rows[0].seconds < 2 and rows[1].seconds < 2     # both stopped at the error, not at -t


def test_the_sq_thread_is_woken_only_when_it_says_it_sleeps():
    """_flush_sq() passes IORING_ENTER_SQ_WAKEUP only once the kernel set IORING_SQ_NEED_WAKEUP."""
    def sqpoll_ring(idle_ms):
        return sendzc.Ring(4, flags=sendzc.IORING_SETUP_SQPOLL, attempts=sendzc.SQPOLL_ATTEMPTS,
                           sq_thread_idle=idle_ms)

    def asleep(ring):
        return ring._sq_words[ring._sq_flags_i] & sendzc.IORING_SQ_NEED_WAKEUP

    nop = sendzc.io_uring_sqe()
    sendzc.prep_nop(nop)
    with sqpoll_ring(2000) as ring:
        # Right after setup the thread may already sleep: it starts with its
        # idle timer run out unless an event (its unpark) restarts it, a race.
        # Once it has submitted something it stays awake sq_thread_idle (2 s).
        ring.place(bytes(nop))
        ring.submit_and_wait(0)                     # wakes it if it sleeps
        assert ring.wait_cqes(1, 2.0) and ring.cq_ready() == 1
        ring.cq_advance(1)
        assert not asleep(ring)                     # busy a moment ago: awake, so no wakeup
        assert not ring._flush_sq()[1] & sendzc.IORING_ENTER_SQ_WAKEUP
    with sqpoll_ring(10) as ring:                   # asleep after 10 ms idle: wake it
        deadline = time.monotonic() + 5
        while not asleep(ring) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert asleep(ring), "the SQ thread never went to sleep"
        assert ring._flush_sq()[1] & sendzc.IORING_ENTER_SQ_WAKEUP
        ring.place(bytes(nop))
        assert ring.wait_cqes(1, 2.0) and ring.cq_ready() == 1   # woken, it submitted the NOP


def test_the_sqpoll_reaper_polls_the_cq_and_sleeps_only_once_the_poll_runs_out(monkeypatch):
    """sqpoll_submit_and_peek(): CQEs the SQ thread posts are reaped with no syscall; none: one bounded sleep."""
    if os.uname().machine != "x86_64":
        pytest.skip("--sqpoll is x86-64 only")
    entered = []
    real = sendzc._syscall
    def counting(nr, *args):                         # io_uring_enter's min_complete, each time
        if nr == sendzc.NR_io_uring_enter:
            entered.append(args[2])
        return real(nr, *args)
    monkeypatch.setattr(sendzc, "_syscall", counting)
    nop = sendzc.io_uring_sqe()
    sendzc.prep_nop(nop)
    with sendzc.Ring(8, flags=sendzc.IORING_SETUP_SQPOLL, attempts=sendzc.SQPOLL_ATTEMPTS,
                     sq_thread_idle=2000) as ring:
        ring.place(bytes(nop))
        ring.submit_and_wait(0)                     # the thread may sleep right after setup: wake it
        assert ring.wait_cqes(1, 2.0)
        ring.cq_advance(1)
        entered.clear()
        # A poll long enough for a loaded host's SQ thread to come round: the
        # CQEs are found by polling, whenever they come, without a syscall.
        monkeypatch.setattr(sendzc, "SQPOLL_SPIN_NS", 2_000_000_000)
        ring.place(bytes(nop) * 4)
        flags, res_sum = sendzc.sqpoll_submit_and_peek(ring, 4)
        assert (flags, res_sum, entered) == ([0] * 4, 0, [])    # four NOPs' CQEs, not one syscall
        ring.cq_advance(4)
        monkeypatch.setattr(sendzc, "SQPOLL_SPIN_NS", 50_000_000)
        t0 = time.perf_counter_ns()
        with pytest.raises(OSError) as e:           # nothing placed: the poll runs out, then the wait
            sendzc.sqpoll_submit_and_peek(ring, 1)
        waited = time.perf_counter_ns() - t0
        assert e.value.errno == errno.ETIME and entered == [1]
        assert waited >= sendzc.SQPOLL_SPIN_NS + sendzc.ENTER_WAIT_NS


def test_a_receiver_on_a_kernel_ring_does_not_support_falls_back_to_recv_into(monkeypatch):
    pretend_kernel_lacks(monkeypatch, sendzc.IORING_FEAT_SINGLE_MMAP)
    with tcp_receiver_on_a_socketpair() as (a, rx, result):
        assert isinstance(rx, sendzc.SocketReceiver)
        assert result.note == (f"io_uring refused (io_uring: this kernel ({os.uname().release}) lacks "
                               f"SINGLE_MMAP (Linux 5.11+): use a newer kernel): received with "
                               f"recv_into instead")


def test_ctrl_c_ends_a_pool_run_with_its_partial_result_and_every_notification():
    with udp_sink_socket() as port:
        p = subprocess.Popen([sys.executable, TOOL, "-D", "127.0.0.1", "-p", str(port), "-t", "20",
                              "-s", "1400", "--pool", "4", "--json", "udp"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.5)                        # well past start-up: the run is under way
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=10)
        finally:
            p.kill()
    assert p.returncode == 130, err
    row = json.loads(out)["rows"][0]
    assert row["interrupted"] is True and row["requests"] > 0 and row["undrained"] == 0
    assert row["notifications"] == row["requests"] == row["pool"]["lag_samples"]
    assert err.splitlines() == [readme_line("Ctrl-C")]


# =============================================================================
# CHART (issue 14, item 1): bench --svg draws the rows --json prints
# =============================================================================

import xml.etree.ElementTree as ET      # noqa: E402  (this block's own; stdlib)

SVG = "{http://www.w3.org/2000/svg}"


def bench_with_chart(tmp_path, *args):
    """`bench --json --svg F ARGS`: (the JSON document, the parsed chart's root, its words)."""
    if not IS_ROOT or not HAVE_IP:
        pytest.skip("bench's private sink needs root and iproute2")
    chart = tmp_path / "chart.svg"
    p = tool("bench", "--json", "--svg", chart, *args)
    if p.returncode == 1 and "no ifb device" in p.stderr:
        pytest.skip(p.stderr.strip())
    assert p.returncode == 0, p.stderr
    root = ET.parse(chart).getroot()                     # well-formed XML, or this raises
    assert root.tag == SVG + "svg"
    words = [" ".join(t.itertext()) for t in root.iter(SVG + "text")]
    return json.loads(p.stdout), root, words


def chart_zc(row):
    """The zc verdict the table (and so the chart) gives a JSON row into the sink."""
    if row["mode"] in ("send_syscall", "send"):
        return "-"
    return "yes" if row["zc_copied"] == 0 else f"COPIED {100 * row['zc_copied'] / row['notifications']:.0f}%"


def drawn(root, row, cls, panel=None):
    """The chart's elements of class cls for this JSON row (and panel)."""
    found = [e for e in root.iter() if e.get("class") == cls and e.get("data-mode") == row["mode"]
             and e.get("data-batch") == str(row["batch"]) and e.get("data-size") == str(row["size"])
             and (panel is None or e.get("data-panel") == panel)]
    for e in found:                                      # the hover text names the row too
        assert e.find(SVG + "title").text.startswith(sendzc.MODE_LABELS[row["mode"]])
    return found


def check_header_and_units(doc, words):
    assert any(w.startswith(f"sendzc {sendzc.VERSION} bench, Linux {doc['kernel']}") for w in words)
    assert any(w.startswith("sink: ifb0 in a network namespace of its own") for w in words)
    assert any(f"host {doc['host']}" in w and "MB = 2^20 bytes" in w for w in words)
    assert "Legend" in words


def test_svg_one_size_has_a_bar_per_json_row_with_its_value(tmp_path):
    doc, root, words = bench_with_chart(tmp_path, "-t", "0.2", "--batches", "1,8")
    assert len(doc["rows"]) == len(BENCH_MODES)
    for row in doc["rows"]:
        (bar,) = drawn(root, row, "bar")
        assert bar.get("data-mb-per-s") == str(row["mb_per_s"])
        assert bar.get("data-zc") == chart_zc(row)
        assert float(bar.get("width")) > 0
    assert len([e for e in root.iter() if e.get("class") == "bar"]) == len(doc["rows"])
    # The longest bar is the fastest row's, as the table's.
    bars = {e.get("data-mode") + e.get("data-batch"): float(e.get("width"))
            for e in root.iter() if e.get("class") == "bar"}
    fastest = max(doc["rows"], key=lambda r: r["mb_per_s"])
    assert max(bars, key=bars.get) == fastest["mode"] + str(fastest["batch"])
    assert len([e for e in root.iter() if e.get("class") == "baseline"]) == 1
    assert "MSG_ZEROCOPY baseline (speedup 1.00x)" in words
    assert "MB/s (MB = 2^20 bytes)" in words
    for _, _, meaning in sendzc.SVG_ZC.values():          # zero-copy vs copied, explained
        assert meaning in words
    check_header_and_units(doc, words)


def test_svg_sizes_draws_rate_and_cpu_per_row_and_marks_the_crossover(tmp_path):
    doc, root, words = bench_with_chart(tmp_path, "-t", "0.2", "--sizes", "1400,65435",
                                        "--batches", "1,8")
    assert len(doc["rows"]) == 2 * len(BENCH_MODES)
    for row in doc["rows"]:
        (rate,) = drawn(root, row, "point", "mb")
        (cpu,) = drawn(root, row, "point", "cpu")
        assert rate.get("data-mb-per-s") == str(row["mb_per_s"])
        assert cpu.get("data-cpu-s-per-gb") == str(row["cpu_s_per_gb"])
        assert rate.get("data-zc") == cpu.get("data-zc") == chart_zc(row)
    series = {e.get("data-series") for e in root.iter() if e.get("class") == "series"}
    labels = {f"{sendzc.MODE_LABELS[m]}, batch {b}" for m, b in BENCH_MODES}
    assert series == labels                               # a line per row label, both panels
    baseline = f"{sendzc.MODE_LABELS[sendzc.BASELINE_MODE]}, batch 1"
    for label in labels - {baseline}:
        assert label in words
    assert f"{baseline} (the baseline)" in words
    for pair, size in doc["crossover"].items():           # each crossover as the JSON has it
        marks = [e for e in root.iter() if e.get("data-pair") == pair and e.get("class") == "crossover"]
        assert marks and all(e.get("data-size") == ("none" if size is None else str(size)) for e in marks)
    for label in ("payload per send, bytes (log scale)", "MB/s (log scale)", "CPU s/GB (log scale)"):
        assert label in words
    check_header_and_units(doc, words)


def test_svg_sweep_draws_rate_and_user_share_per_row_and_marks_each_knee(tmp_path):
    doc, root, words = bench_with_chart(tmp_path, "--sweep", "-t", "0.2", "--sizes", "1400",
                                        "--batches", "1,8")
    for row in doc["rows"]:
        (rate,) = drawn(root, row, "point", "mb")
        (user,) = drawn(root, row, "point", "user")
        assert rate.get("data-mb-per-s") == user.get("data-mb-per-s") == str(row["mb_per_s"])
        cpu = row["cpu_user_s"] + row["cpu_sys_s"]
        assert user.get("data-user-pct") == str(round(100 * row["cpu_user_s"] / cpu, 1))
    for mode in {r["mode"] for r in doc["rows"]}:         # with and without SQPOLL
        mine = [r for r in doc["rows"] if r["mode"] == mode]
        best = max(r["mb_per_s"] for r in mine)
        knee = min(r["batch"] for r in mine if r["mb_per_s"] >= sendzc.KNEE_MARGIN * best)
        (ring,) = [e for e in root.iter() if e.get("class") == "knee" and e.get("data-mode") == mode]
        assert ring.get("data-batch") == str(knee)
        assert f"knee: batch {knee}" in words
        assert sendzc.MODE_LABELS[mode] in words
    assert "user % (Python, ctypes)" in words and "MB/s" in words
    check_header_and_units(doc, words)


@needs_root
def test_svg_after_ctrl_c_holds_the_rows_measured(tmp_path):
    chart = tmp_path / "partial.svg"
    proc = subprocess.Popen([sys.executable, TOOL, "bench", "-t", "0.5", "--svg", str(chart)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if not proc.stdout.readline():                   # the header: the sink is up
            pytest.skip(proc.communicate()[1].strip())
        time.sleep(1.2)                                  # two rows done, the third under way
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    table = [line for line in out.splitlines() if re.match(r"(send|io_uring|MSG_ZEROCOPY)", line)]
    root = ET.parse(chart).getroot()
    bars = [e for e in root.iter() if e.get("class") == "bar"]
    assert 2 <= len(bars) == len(table) < len(BENCH_MODES)
    assert bars[-1].find(SVG + "title").text.endswith("(interrupted)")
    assert any(e.get("class") == "partial" for e in root.iter())


@needs_root
def test_svg_that_cannot_be_written_is_one_line_after_the_table():
    p = tool("bench", "-t", "0.1", "--batches", "8", "--svg", "/sys/sendzc.svg")
    assert p.returncode == 1
    assert only_line(p) == readme_line("`bench --svg FILE`")
    assert "io_uring SEND_ZC fixed buf" in p.stdout            # the table came first
    assert not os.path.exists("/sys/sendzc.svg")


# =============================================================================
# PROBE (issue 14, item 3): --probe knows the newest kernels and the limits
# =============================================================================

NEWER = {"sendmsg_zc_fixed_buf": (6, 15), "send_vectorized": (6, 17), "send_zc_vectorized": (6, 17),
         "send_bundle": (6, 10), "zero_copy_receive": (6, 15)}


def test_probe_asks_this_kernel_for_each_newer_feature():
    doc = tool_json("--probe")
    newer = doc["probe"]["newer"]
    assert set(newer) == set(NEWER) | {"send_zc_bundle"}
    for key, (major, minor) in NEWER.items():
        assert newer[key]["since"] == f"{major}.{minor}"
        if kernel_at_least(major, minor):
            assert newer[key]["supported"] is True, newer[key]
    for key in ("sendmsg_zc_fixed_buf", "send_vectorized", "send_zc_vectorized", "send_bundle"):
        if newer[key]["supported"]:                   # the bytes went over loopback and came back
            assert newer[key]["answer"] == "2 bytes sent over loopback, received intact"
    if kernel_at_least(6, 10):
        assert newer["send_zc_bundle"] == {"since": "6.10", "supported": False, "answer":
                                           "EINVAL: SEND_ZC does not take them (bundles are SEND's alone)"}
    if IS_ROOT and kernel_at_least(6, 15):
        assert "EFAULT on our unreadable argument" in newer["zero_copy_receive"]["answer"]
    text = tool("--probe").stdout.splitlines()
    assert "newer features (each asked of this kernel, not read from its version):" in text
    if kernel_at_least(6, 17):
        assert "  SEND_ZC, IORING_SEND_VECTORIZED (6.17): yes: 2 bytes sent over loopback, received intact" in text


def test_probe_a_flag_this_kernel_does_not_know_is_answered_no(monkeypatch):
    """The probe asks, it does not assume: an ioprio bit no kernel knows yet comes back EINVAL."""
    unknown = 1 << 15
    monkeypatch.setattr(sendzc, "IORING_SEND_VECTORIZED", unknown)
    for zc in (False, True):
        row = sendzc.probe_send("6.17", "a send with an unknown flag", sendzc.vectorized(zc))
        assert row == {"since": "6.17", "supported": False,
                       "answer": "EINVAL: this kernel does not know a send with an unknown flag"}
    monkeypatch.setattr(sendzc, "IORING_RECVSEND_BUNDLE", unknown)
    assert sendzc.probe_send_bundle()["supported"] is False


def test_probe_leaks_nothing():
    sendzc.newer_features(sendzc.Probe(0, frozenset({sendzc.IORING_OP_RECV_ZC})))     # warm up
    sendzc.zero_copy_limits()
    fds, maps = open_fds(), mappings()
    with sendzc.Ring(4) as ring:
        probe = sendzc.get_probe(ring)
    sendzc.newer_features(probe)
    sendzc.zero_copy_limits()
    assert (open_fds(), mappings()) == (fds, maps)


MEMLOCK_FIX = ("    fix: raise it: `ulimit -l 1024` (or more) in the shell that runs sendzc, `memlock` in "
               "/etc/security/limits.conf, LimitMEMLOCK= for a service; or run as root")


def test_probe_as_a_user_with_little_locked_memory_says_how_to_raise_it(nobody):
    if not RINGS_CHARGED:               # Debian's 6.1 answered "the registered buffer did not fit"
        pytest.skip("rings count against RLIMIT_MEMLOCK before 5.12 and since 6.14, not on this kernel")
    p = nobody("--probe", "--json", memlock=MEMLOCK)
    doc = json.loads(p.stdout)
    memlock = doc["probe"]["limits"]["memlock"]
    assert memlock["ok"] is False and memlock["value"] == "16 KiB"
    assert memlock["answer"] == "too low: the ring did not fit (ENOMEM)"     # 512 entries: 16 KiB is short
    assert memlock["fix"] == MEMLOCK_FIX.strip()[len("fix: "):]
    assert p.returncode == 1
    assert "locked memory for the ring and its registered buffer (RLIMIT_MEMLOCK)" in p.stderr
    text = nobody("--probe", memlock=MEMLOCK).stdout.splitlines()
    at = text.index("  RLIMIT_MEMLOCK 16 KiB: SHORT: too low: the ring did not fit (ENOMEM)")
    assert text[at + 1] == MEMLOCK_FIX
    # With room for the ring but not for the 64 KiB buffer, the answer names the buffer.
    # (Measured on 6.18: the ring takes 64-96 KiB, with the buffer 128-160 KiB.)
    doc = json.loads(nobody("--probe", "--json", memlock=128 << 10).stdout)
    assert doc["probe"]["limits"]["memlock"]["answer"] == "too low: the registered buffer did not fit (ENOMEM)"
    doc = json.loads(nobody("--probe", "--json", memlock=8 << 20).stdout)
    assert doc["probe"]["limits"]["memlock"] == {
        "ok": True, "value": "8192 KiB", "need": "64 KiB registered buffer and a ring of 512 entries",
        "answer": "the ring and the registered buffer fit", "fix": None}
    # Not root: the registration is refused for want of CAP_NET_ADMIN, and the answer says so.
    if kernel_at_least(6, 15):
        assert doc["probe"]["newer"]["zero_copy_receive"] == {
            "since": "6.15", "supported": True,
            "answer": "here, but IORING_REGISTER_ZCRX_IFQ needs CAP_NET_ADMIN (EPERM)"}


def test_probe_with_a_small_optmem_max_says_how_to_raise_it():
    with sink_with_optmem(20480) as ns:
        doc = tool_json("--probe", ns=ns)
        text = tool("--probe", ns=ns).stdout.splitlines()
    optmem = doc["probe"]["limits"]["optmem_max"]
    assert optmem == {"ok": False, "value": 20480, "need": 131072,
                      "answer": "short: MSG_ZEROCOPY sends will meet ENOBUFS and wait for completions",
                      "fix": "`sysctl -w net.core.optmem_max=131072` as root"}
    at = text.index("  net.core.optmem_max 20480 (MSG_ZEROCOPY wants 131072): SHORT: short: MSG_ZEROCOPY "
                    "sends will meet ENOBUFS and wait for completions")
    assert text[at + 1] == "    fix: `sysctl -w net.core.optmem_max=131072` as root"
    assert doc["probe"]["missing"] == []              # slower, not refused: the sender still runs


def test_probe_udp_segment_splits_one_send_into_datagrams():
    row = sendzc.udp_segment_room()
    assert row == {"ok": True, "value": True, "need": True, "fix": None,
                   "answer": "one send of 200 bytes arrived as datagrams of 100, 100 bytes"}


def test_probe_json_matches_the_fields_readme_documents():
    doc = tool_json("--probe")
    check_against_readme(doc, "### The --probe JSON document")
    check_against_readme(doc["probe"], "### The probe object")
    for row in doc["probe"]["newer"].values():
        check_against_readme(row, "### A --probe feature")
    for row in doc["probe"]["limits"].values():
        check_against_readme(row, "### A --probe limit")


# =============================================================================
# === HARD: hardening (issue 13) ===
#
# Each test below failed on the code before issue 13's fixes. Signals at
# awkward moments, peers that stall or reset, refusals under --json, the
# words of suggestions and notes, old Pythons; then the fuzz test.
# =============================================================================

PYENV = os.path.expanduser("~/.pyenv/versions")

# Runs the tool as a program (run_name "__main__", as `python3 sendzc.py`
# does) with a spy that sends the tool a signal at one exact moment:
#   import:MODULE     as the tool's own `import MODULE` starts (before main())
#   restore           as main() gives back the SIGINT handler it installed
SIGNAL_AT = textwrap.dedent("""
    import os, runpy, signal, sys
    when, signum = sys.argv[1], getattr(signal, sys.argv[2])
    if when.startswith("import:"):
        def hook(event, args):
            if event == "import" and args[0] == when[len("import:"):]:
                os.kill(os.getpid(), signum)
        sys.addaudithook(hook)
    else:
        real = signal.signal
        def spy(n, handler):
            old = real(n, handler)
            if n == signal.SIGINT and getattr(old, "__name__", "") == "on_sigint":
                os.kill(os.getpid(), signum)
            return old
        signal.signal = spy
    sys.argv = sys.argv[3:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def tool_signalled_at(when, signame, *args):
    return subprocess.run([sys.executable, "-c", SIGNAL_AT, when, signame, TOOL, *map(str, args)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("signame,status", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_signal_before_main_is_one_line_not_a_traceback(signame, status, as_json):
    """Issue 13, item 14: a signal while the module still imports: no run, one line (and a document)."""
    label = "Ctrl-C" if signame == "SIGINT" else signame
    p = tool_signalled_at("import:argparse", signame, *(["--json"] if as_json else []),
                          "-D", "127.0.0.1", "-t", "5", "udp")
    assert p.returncode == status
    line = readme_line("any of the three while the tool is still starting", {"Ctrl-C": label})
    assert only_line(p) == line
    if as_json:
        doc = json.loads(p.stdout)
        assert doc["rows"] == [] and f"sendzc: {doc['error']}" == line
    else:
        assert p.stdout == ""


def test_ctrl_c_as_main_returns_does_not_kill_the_tool():
    """Item 14: a Ctrl-C after the result is out (as main() lets go of SIGINT) changes nothing."""
    with udp_sink_socket() as port:
        p = tool_signalled_at("restore", "SIGINT", "--json", "-D", "127.0.0.1", "-p", port,
                              "-t", "0.2", "-i", "0.1", "-s", "1400", "udp")
    assert (p.returncode, p.stderr) == (0, "")
    assert json.loads(p.stdout)["rows"][0]["requests"] > 0


@pytest.mark.parametrize("signame,status,as_json", [("SIGTERM", 143, False), ("SIGHUP", 129, True)])
def test_sigterm_and_sighup_end_the_run_as_ctrl_c_does(signame, status, as_json):
    """Item 15: the partial result, one line naming the signal, 128+N."""
    with udp_sink_socket() as port:
        p = subprocess.Popen([sys.executable, TOOL, *(["--json"] if as_json else []), "-D", "127.0.0.1",
                              "-p", str(port), "-t", "10", "-i", "0.1", "-s", "1400", "udp"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if as_json:
                time.sleep(1.0)                    # no interval lines on stdout with --json
            else:
                assert INTERVAL_LINE.match(p.stdout.readline())
            p.send_signal(getattr(signal, signame))
            out, err = p.communicate(timeout=10)
        finally:
            p.kill()
    assert p.returncode == status
    assert err.splitlines() == [readme_line("SIGTERM", {"SIGTERM": signame})]
    if as_json:
        row = json.loads(out)["rows"][0]
        assert row["interrupted"] is True and row["requests"] > 0 and row["error"] is None
    else:
        assert re.search(r"^tx=\d+ \(\d+ MB\) txc=\d+", out, re.M)


@pytest.mark.parametrize("version", ["3.6.15", "3.8.18"])
def test_an_older_python_is_refused_in_one_line(version):
    """Item 17: below 3.9, one line before any import can fail (3.6 has no dataclasses)."""
    python = os.path.join(PYENV, version, "bin", "python")
    if not os.path.exists(python):
        pytest.skip(f"no Python {version} at {python}")
    for args in (["--help"], ["-D", "127.0.0.1", "-t", "0.1", "udp"]):
        p = subprocess.run([python, TOOL, *args], capture_output=True, text=True, timeout=30)
        assert (p.returncode, p.stdout) == (1, "")
        assert only_line(p) == readme_line("Python older than 3.9", {"3.8.18": version})


# --- lost data is not success (items 2, 3, 16) ----------------------------------

@contextlib.contextmanager
def resetting_receiver(after=2.0):
    """A TCP receiver that accepts, never reads, and resets the connection after `after` s.

    Its receive buffer is small (a connection inherits it from the listener),
    so the sender's sends are still waiting in the kernel when the reset comes.
    """
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def reset_later():
        import struct
        conn, _ = listener.accept()
        time.sleep(after)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()                               # linger 0: an RST, the unread data dropped
    t = threading.Thread(target=reset_later)
    t.start()
    try:
        yield listener.getsockname()[1]
    finally:
        t.join(30)
        listener.close()


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_sends_that_failed_after_a_reset_are_no_success(as_json):
    """Item 2: the reset comes during the drain; the sends it failed make the run fail."""
    with resetting_receiver() as port:
        p = tool(*(["--json"] if as_json else []), "-D", "127.0.0.1", "-p", port, "-t", "1", "tcp")
    assert p.returncode == 1
    line = readme_line("TCP: the receiver resets while the sender waits", at("127.0.0.1", port))
    assert only_line(p) == line
    if as_json:
        row = json.loads(p.stdout)["rows"][0]
        assert row["failed"] > 0 and f"sendzc: {row['error']}" == line


def test_ctrl_c_during_the_drain_cuts_it_short_and_keeps_the_error():
    """Item 3: -t ended the run; one Ctrl-C while the drain waits ends the wait, the line stays."""
    with stalled_listener() as listener:
        port = listener.getsockname()[1]
        p = subprocess.Popen([sys.executable, TOOL, "--json", "-D", "127.0.0.1", "-p", str(port),
                              "-t", "0.5", "tcp"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err, took = interrupt_timed(p, 1.5)   # the run is over; the drain waits
    assert p.returncode == 1 and took < 2
    stalled = readme_pattern("TCP: the receiver stops reading, and Ctrl-C",
                             {**at(re.escape("127.0.0.1"), port), "1.2": r"([\d.]+)"})
    m = stalled.fullmatch(only_line(subprocess.CompletedProcess([], 1, out, err)))
    assert m and float(m.group(1)) < sendzc.DRAIN_SECONDS
    row = json.loads(out)["rows"][0]
    assert row["interrupted"] is True and row["undrained"] > 0
    assert f"sendzc: {row['error']}" == err.strip()


def test_a_trace_into_a_stalled_receiver_waits_as_long_as_it_says():
    """Item 16: -t ends the trace too; the drain then waits the 5 s its line names, no more."""
    with stalled_listener() as listener:
        port = listener.getsockname()[1]
        started = time.monotonic()
        p = tool("-D", "127.0.0.1", "-p", port, "-t", "0.3", "--trace", "1000", "tcp")
        took = time.monotonic() - started
    assert p.returncode == 1
    assert only_line(p) == readme_line("TCP: the receiver stops reading, no reset", at("127.0.0.1", port))
    assert took < 0.3 + sendzc.DRAIN_SECONDS + 2


def test_a_run_that_sent_nothing_says_so_and_fails():
    """Item 16: -t too short for one batch: no result with a CPU note, one line, exit 1."""
    with udp_sink_socket() as port:
        p = tool("-D", "127.0.0.1", "-p", port, "-t", "1e-300", "udp")
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == readme_line("no send completed at all")


def test_short_intervals_keep_their_precision():
    """Item 16: -i 0.001: the lines' two ends differ, and JSON's rates agree with start and end."""
    with udp_sink_socket() as port:
        p = tool("-D", "127.0.0.1", "-p", port, "-t", "0.05", "-i", "0.001", "-s", "1400", "udp")
        doc = tool_json("-D", "127.0.0.1", "-p", port, "-t", "0.05", "-i", "0.001", "-s", "1400", "udp")
    assert p.returncode == 0, p.stderr
    spans = re.findall(r"^\[\s*([\d.]+)-\s*([\d.]+) s\]", p.stdout, re.M)
    assert len(spans) > 5 and all(float(a) < float(b) for a, b in spans), spans
    rows = doc["rows"][0]["intervals"]
    assert len(rows) > 5
    for row in rows:
        assert row["end"] > row["start"]
        mb_per_s = row["bytes"] / 2**20 / (row["end"] - row["start"])
        assert mb_per_s == pytest.approx(row["mb_per_s"], rel=0.01, abs=0.1)


# --- connect() is bounded and hears Ctrl-C (item 4) ------------------------------

def test_tcp_connect_into_silence_gives_up_in_one_line(sink):
    """Item 4: SYNs routed out of the ifb sink are never answered: give up after CONNECT_SECONDS."""
    started = time.monotonic()
    p = tool("-D", SINK4, "-t", "0.2", "tcp", ns=sink)
    took = time.monotonic() - started
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == readme_line("TCP: no answer to the connection", at(SINK4, sendzc.DEFAULT_PORT))
    assert took < sendzc.CONNECT_SECONDS + 3


@pytest.mark.parametrize("bench", [False, True], ids=["sender", "bench"])
def test_ctrl_c_ends_a_tcp_connect_into_silence(sink, bench):
    """Item 4: Ctrl-C while connect() waits for an answer: at once, 130, a JSON document too."""
    args = ["bench", "--json", "-D", SINK4, "-t", "0.2", "tcp"] if bench else \
           ["--json", "-D", SINK4, "-t", "0.2", "tcp"]
    p = subprocess.Popen(["ip", "netns", "exec", sink, sys.executable, TOOL, *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err, took = interrupt_timed(p, 1.0)
    assert p.returncode == 130 and took < 1.5
    doc = json.loads(out)
    assert doc["rows"] == []
    if bench:
        assert err.splitlines() == [readme_line("Ctrl-C")] and doc["error"] is None
    else:
        line = readme_line("TCP: Ctrl-C while `connect()` waits", at(SINK4, sendzc.DEFAULT_PORT))
        assert err.splitlines() == [line] and f"sendzc: {doc['error']}" == line


# --- --json: one document, whatever ends the run (item 12) -----------------------

def check_refusal_document(p, status):
    """A --json run that was refused: the status, one line, and a document whose error is that line."""
    assert p.returncode == status
    line = only_line(p)
    doc = json.loads(p.stdout)
    check_against_readme(doc, "### The JSON document")
    assert doc["rows"] == [] and doc["params"] is None and f"sendzc: {doc['error']}" == line
    return line


def test_json_tcp_refused_prints_a_document():
    port = free_port()
    p = tool("--json", "-D", "127.0.0.1", "-p", port, "-t", "0.2", "tcp")
    assert check_refusal_document(p, 1) == readme_line("TCP: no receiver", at("127.0.0.1", port))


def test_json_io_uring_disabled_prints_a_document():
    with udp_sink_socket() as port, sysctl("kernel.io_uring_disabled", 2):
        p = tool("--json", "-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp")
    assert check_refusal_document(p, 1) == readme_line("io_uring disabled")


@needs_root
def test_json_bench_with_a_bogus_qdisc_prints_a_document():
    p = tool("bench", "--json", "--qdisc", "bogus", "-t", "0.1")
    line = check_refusal_document(p, 1)
    assert line.startswith("sendzc: bench: `tc qdisc replace dev ifb0 root bogus`: ")


@pytest.mark.parametrize("case", ["-r larger than the ring", "-f with --no-zc", "rx: -n with udp",
                                  "bench: --qdisc with -D"])
def test_json_usage_mistake_prints_a_document(case):
    args, line = USAGE_MISTAKES[case]
    p = tool(*args[:1], "--json", *args[1:]) if args[0] in ("rx", "bench") else tool("--json", *args)
    assert check_refusal_document(p, 2) == line


# --- Ctrl-C while bench makes its sink (item 9) ------------------------------------

# An `ip` first on PATH that lets the real one do everything but `ip link
# add`, during which the user presses Ctrl-C: the whole foreground group gets
# SIGINT, the tool and the command with it, and the command fails.
CTRL_C_DURING_LINK_ADD = """#!/bin/sh
case "$*" in
    "link add"*) kill -INT $PPID; sleep 0.2; exit 130 ;;
esac
exec {ip} "$@"
"""


@needs_root
def test_ctrl_c_while_bench_adds_the_sink_device_is_an_interruption(tmp_path):
    (tmp_path / "ip").write_text(CTRL_C_DURING_LINK_ADD.format(ip=shutil.which("ip")))
    (tmp_path / "ip").chmod(0o755)
    before = host_net()
    p = tool("bench", "-t", "0.1", env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert_host_unchanged(before)
    assert (p.returncode, p.stdout) == (130, "")
    assert only_line(p) == readme_line("`bench`: Ctrl-C while the private sink is being made")


# --- a suggested command works (item 13) --------------------------------------------

def parses(command):
    """Does `python3 sendzc.py ...` (ADDR an address) get past the command line, as main() reads it?"""
    argv = command.split()[2:]
    argv = ["192.0.2.1" if w == "ADDR" else w for w in argv]
    if argv == ["--help"]:
        return True
    if argv[:1] == ["bench"]:
        sendzc.bench_config(sendzc.bench_parser().parse_args(argv[1:]))
    elif argv[:1] == ["rx"]:
        sendzc.rx_parser().parse_args(argv[1:])
    else:
        sendzc.sender_config(sendzc.sender_parser().parse_args(argv))
    return True


# The usage lines that suggest a command to run instead (README's table, as above).
SUGGESTIONS = {case: line for case, (_, line) in USAGE_MISTAKES.items() if "`python3 sendzc.py " in line}


@pytest.mark.parametrize("case", list(SUGGESTIONS))
def test_every_command_a_usage_line_suggests_works(case):
    # Every command the line suggests gets past the command line (no -D: the
    # sender runs into the private sink, which needs only root).
    suggested = re.findall(r"`(python3 sendzc\.py [^`]*)`", SUGGESTIONS[case])
    assert suggested and all(parses(c) for c in suggested)


def test_help_names_bench_as_it_is_typed():
    p = tool("--help")
    assert p.returncode == 0 and "[bench]" not in p.stdout
    assert "sendzc.py bench [options]" in p.stdout


# --- a seccomp filter that refuses one io_uring call only (item 10) ------------------

IO_URING_NR = {"io_uring_enter": 426, "io_uring_register": 427}   # the same on x86_64 and aarch64


def seccomp_only_exec(call):
    """SECCOMP_EXEC, its filter refusing one io_uring syscall instead of all three."""
    script, n = re.subn(r"    \(BPF_JEQ_K, 3, 0, 425\).*?427\),[^\n]*\n",
                        f"    (BPF_JEQ_K, 1, 0, {IO_URING_NR[call]}),\n", SECCOMP_EXEC, flags=re.S)
    assert n == 1
    return script


def tool_with_only(call, *args, **kw):
    if os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip("the filter knows the io_uring syscall numbers of x86_64 and aarch64 only")
    return subprocess.Popen([sys.executable, "-c", seccomp_only_exec(call), "EPERM", TOOL, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def seccomp_line(call):
    return readme_line({"io_uring_enter": "a seccomp filter that allows `io_uring_setup` but refuses",
                        "io_uring_register": "... or refuses `io_uring_register`"}[call])


@pytest.mark.parametrize("call", list(IO_URING_NR))
def test_a_filter_refusing_one_io_uring_call_is_named_in_one_line(call):
    with udp_sink_socket() as port:
        p = tool_with_only(call, "-D", "127.0.0.1", "-p", port, "-t", "0.2", "udp")
        out, err = p.communicate(timeout=30)
    p = subprocess.CompletedProcess([], p.returncode, out, err)
    assert (p.returncode, p.stdout) == (1, "")
    assert only_line(p) == seccomp_line(call)


@pytest.mark.parametrize("call", list(IO_URING_NR))
def test_probe_reports_a_filter_refusing_one_io_uring_call(call):
    p = tool_with_only(call, "--probe")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 1
    line = seccomp_line(call)[len("sendzc: "):]
    assert out.splitlines()[0].startswith("kernel ")            # the report, not only the line
    assert f"{call}: refused: {line}" in out.splitlines()
    assert err.splitlines() == [f"sendzc: missing: {call} ({line})"]


@pytest.mark.parametrize("call", list(IO_URING_NR))
def test_the_receiver_falls_back_when_one_io_uring_call_is_refused(call):
    port = free_port()
    rx = tool_with_only(call, "rx", "--json", "-4", "-p", port, "tcp")
    assert_rx_fell_back_to_recv_into(rx, port, call)


# --- an interrupted bench judges no crossover (item 11) ---------------------------

@needs_root
def test_an_interrupted_bench_judges_no_crossover():
    """Ctrl-C in the third row of 1400 B: 65435 B was never measured, so no verdict over it."""
    p = subprocess.Popen([sys.executable, TOOL, "bench", "--sizes", "1400,65435", "-t", "0.3", "-i", "0.1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        headers = 0
        for line in p.stdout:
            if line.startswith("-- "):
                headers += 1
                if headers == 3:
                    break
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    if p.returncode == 1 and "no ifb device" in err:
        pytest.skip(err.strip())
    assert p.returncode == 130, err
    assert err.splitlines() == [readme_line("Ctrl-C")]
    assert "where zero-copy starts to pay: not judged, as the run ended before it had measured every size" in out
    assert "not at any size measured" not in out and "65435 B per send" not in out


# --- the fuzz test --------------------------------------------------------------------
#
# Random command lines within the CLI's grammar (some of them usage mistakes,
# which the grammar allows), each run for a fraction of a second inside a
# namespace with a sink, some cut short by Ctrl-C at a random moment. Seeded:
# a failure names its seed and command line, and reproduces.

FUZZ_SEED = 13
FUZZ_RUNS = 40


def fuzz_command(rng, svg_dir="."):
    """(argv, send SIGINT after this many seconds or None)."""
    def some(*options):
        return [w for o in options if rng.random() < 0.3 for w in o]

    t = rng.choice(["0.05", "0.1", "0.2"])
    common = some(["--json"], ["-i", rng.choice(["0.05", "0.001", "1e-300"])]) + \
        (["-p", str(rng.choice([8000, 9100]))] if rng.random() < 0.3 else [])
    form = rng.choices(["send", "rx", "bench", "probe"], weights=[6, 1, 2, 1])[0]
    if form == "probe":
        return ["--probe", *some(["--json"])], None
    if form == "rx":                               # no sender: only Ctrl-C ends it
        proto = rng.choice(["udp", "tcp"])
        return ["rx", *common, *some(["-t", t], ["--no-verify"], ["--no-uring"], ["-4"], ["-6"], ["--pool"],
                                     ["--keep"], ["--discard"], ["-n", rng.choice(["2", "99999999"])]), proto], \
            rng.uniform(0.2, 0.6)
    if form == "bench":
        argv = ["bench", "-t", t, "--batches", rng.choice(["1", "1,8"]), *common,
                *some(["--sizes", "1400,65435"], ["--sweep"], ["--qdisc", rng.choice(["fq", "bogus"])],
                      ["--svg", rng.choice([os.path.join(svg_dir, "fuzz.svg"), ""])])]
        if rng.random() < 0.3 and "--qdisc" not in argv:
            argv += ["-D", SINK4]
        return argv, rng.choice([None, None, rng.uniform(0.1, 1.0)])
    proto = rng.choices(["udp", "raw", "tcp"], weights=[6, 1, 2])[0]
    addr = rng.choice([SINK4, SINK6, "127.0.0.1"])
    if proto == "tcp" and addr != "127.0.0.1":
        stop = rng.uniform(0.1, 0.5)               # SYNs into the sink: connect() would wait 5 s
    else:
        stop = rng.choice([None, None, None, rng.uniform(0.05, 0.4)])
    argv = ["-D", addr, "-t", t, *common,
            *some(["-s", rng.choice(["1", "1400", "65435", "70000"])], ["-r", rng.choice(["1", "8", "64", "1024"])],
                  ["-f"], ["--no-zc"], ["--no-fixed-buf"], ["--sendmsg"], ["--entries", rng.choice(["8", "100", "512"])],
                  ["--trace", "2"], ["--sqpoll"], ["-4"], ["-6"], ["--gso", rng.choice(["1472", "auto", "١٤٧٢"])],
                  ["--pool", rng.choice(["4", "1024"])]), proto]
    if "-i" not in argv and rng.random() < 0.2:
        argv[-1:-1] = ["-n", rng.choice(["2", "3", "99999999"])]
    if "-n" in argv and "--json" in argv and "--trace" in argv:
        argv.remove("--trace")                     # item 6 (another change): -n's --trace goes to stdout
        argv.remove("2")
    return argv, stop


def wait_until_running(p, timeout=10):
    """Until the tool's first lines have run: it catches SIGTERM (SigCgt in /proc/PID/status).

    Before that, Python itself is starting and compiling the file, and a
    Ctrl-C is Python's own KeyboardInterrupt at "line 0": no line of any
    file can catch it (README, "When it fails").
    """
    give_up = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < give_up:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                caught = int(next(l for l in f if l.startswith("SigCgt:")).split()[1], 16)
        except (OSError, StopIteration):
            return
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.002)


def test_fuzz_command_lines_end_cleanly(sink, tmp_path):
    """No traceback, a status in {0, 1, 2, 130}, and with --json exactly one JSON document."""
    import random
    rng = random.Random(FUZZ_SEED)
    for run in range(FUZZ_RUNS):
        argv, stop = fuzz_command(rng, str(tmp_path))
        what = f"seed {FUZZ_SEED}, run {run}: sendzc.py {' '.join(argv)} (SIGINT after {stop})"
        p = subprocess.Popen(["ip", "netns", "exec", sink, sys.executable, TOOL, *argv],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if stop is not None:
                wait_until_running(p)
                try:
                    p.wait(stop)
                except subprocess.TimeoutExpired:
                    p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=20)
        finally:
            p.kill()
        assert "Traceback" not in err, f"{what}\n{err}"
        assert p.returncode in (0, 1, 2, 130), f"{what}: status {p.returncode}\n{err}"
        if p.returncode:
            assert err.strip(), f"{what}: failed without a line"
        if "--json" in argv and "--help" not in argv:
            try:
                json.loads(out)
            except ValueError:
                pytest.fail(f"{what}: not one JSON document:\n{out}\n{err}")


def test_a_flow_the_receiver_never_took_fails_the_run():
    """Item 2, with -n 3 into a receiver that takes 2: the third flow's data never arrived."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # the third flow's sends wait
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    got = []

    def read_to_the_end(conn):
        with conn:
            got.append(sum(iter(lambda: len(conn.recv(1 << 20)), 0)))

    def take_two():
        readers = [threading.Thread(target=read_to_the_end, args=(listener.accept()[0],)) for _ in range(2)]
        for r in readers:
            r.start()
        time.sleep(2)
        listener.close()                     # the connection still queued is reset
        for r in readers:
            r.join(30)
    taker = threading.Thread(target=take_two)
    taker.start()
    try:
        p = tool("--json", "-n", "3", "-D", "127.0.0.1", "-p", port, "-t", "1", "tcp")
    finally:
        taker.join(30)
    assert p.returncode == 1
    line = readme_line("TCP: the receiver quits or resets mid-run", at("127.0.0.1", port))
    assert only_line(p) == line
    rows = json.loads(p.stdout)["rows"]
    lost = [r for r in rows if r["error"]]
    assert len(lost) == 1 and lost[0]["failed"] > 0 and f"sendzc: {lost[0]['error']}" == line
    # The plain receiver took the control connection first: it carried flow 0, after the hello line.
    hello = hello_bytes(rows[0])
    assert sorted(r["bytes"] + (hello if i == 0 else 0) for i, r in enumerate(rows) if not r["error"]) == sorted(got)


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
    bulk judge counts them all the same, every send whole and every notification copied."""
    row = tool_json_to_loopback("-t", "0.3", "-s", "1400", "udp")["rows"][0]
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
    assert err.splitlines() == [readme_line("`-n`: one flow's process dies")]
    assert not any(os.path.exists(f"/proc/{k}") for k in kids)


# =============================================================================
# Every usage mistake in README's table: one line, status 2
# =============================================================================

@pytest.mark.parametrize("case", list(USAGE_MISTAKES))
def test_a_usage_mistake_is_one_line_and_status_2(case):
    args, line = USAGE_MISTAKES[case]
    p = tool(*args)
    assert p.returncode == 2
    assert only_line(p) == line
    if "--json" in args:                    # and the document, its error the same line
        assert json.loads(p.stdout)["error"] == line[len("sendzc: "):]
    else:
        assert p.stdout == ""


def test_a_kernel_without_report_usage_says_it_cannot_tell_whether_it_copied():
    """6.0, and 6.1 before its stable series took REPORT_USAGE: nothing is called zero-copy unshown."""
    r = sendzc.Result("send_zc_fixed", "udp", 65435, 8, requests=800, bytes=800 * 65435, seconds=1.0,
                      notifications=800, zc_copied=None)
    zc = [line for line in sendzc.describe_result(r) if line.startswith("zero-copy")]
    assert zc == ["zero-copy: this kernel cannot say whether it copied: its SEND_ZC refuses REPORT_USAGE "
                  "(Linux 6.2+, and the stable series that took it)"]
    assert sendzc.zc_mark(r) == "?"


def test_the_python_share_note_only_for_a_run_that_kept_its_cpu_busy(monkeypatch):
    """A run paced by its path (a token bucket, a slow receiver) used a few ms of CPU in a
    second: its 'share' says nothing, and 'a larger -r' would not help. One that was busy gets it."""
    def notes(user, sys_s):
        r = sendzc.Result("send_zc_fixed", "udp", 65435, 8, requests=800, bytes=800 * 65435,
                          seconds=1.0, cpu_user_s=user, cpu_sys_s=sys_s)
        return [line for line in sendzc.describe_result(r) if line.startswith("note: Python took")]
    assert notes(0.01, 0.0) == []                          # paced: 1% of a CPU, all of it user
    assert notes(0.4, 0.6) == ["note: Python took 40% of the CPU at batch 8: a larger -r, or --sqpoll, "
                               "leaves more to the kernel (`sendzc.py bench --sweep` shows where "
                               "batching stops paying)"]
    assert notes(0.1, 0.9) == []                           # busy, but Python under 15%
    # --sqpoll: the share is Python polling the CQ ring, on purpose; a larger -r would not lower it
    r = sendzc.Result("send_zc_fixed", "udp", 65435, 8, requests=800, bytes=800 * 65435, seconds=1.0,
                      cpu_user_s=1.0, cpu_sys_s=1.0, setup=["IORING_SETUP_SQPOLL"])
    assert [line for line in sendzc.describe_result(r) if line.startswith("note:")] == [
        "note: --sqpoll: Python polled the CQ ring rather than sleep (1.00 s of user CPU), so that the "
        "SQ thread never wakes it: this flow takes two cores"]
    # arm64 refuses --sqpoll: Debian's arm64 6.1 was told to try it; there the note names -r alone
    monkeypatch.setattr(sendzc.platform, "machine", lambda: "aarch64")
    assert notes(0.4, 0.6) == ["note: Python took 40% of the CPU at batch 8: a larger -r leaves more to "
                               "the kernel (`sendzc.py bench --sweep` shows where batching stops paying)"]


# =============================================================================
# HARDEN (issue 22 items 1, 2, 4, 6, 7; issue 19 item 4)
# =============================================================================

def send_tcp(port, data, chunk=0):
    """A plain socket that writes data (in chunks of chunk bytes, each one send) to rx, then closes."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        for at in range(0, len(data), chunk or len(data) or 1):
            s.sendall(data[at:at + (chunk or len(data))])


def send_udp(port, datagrams):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", port))
            time.sleep(0.002)                # rx's socket buffer is large; this only keeps order plain


def rx_against(rx_args, proto, data, as_json=True):
    """rx ARGS proto on loopback, fed data (bytes for tcp, a list of datagrams for udp) by a plain
    socket: (status, stdout, stderr)."""
    port = free_port(socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    rx, _ = start_rx_args(*(["--json"] if as_json else []), "-4", "-p", port, *rx_args, proto)
    with reaped(rx):
        send_tcp(port, data) if proto == "tcp" else send_udp(port, data)
        out, err = rx.communicate(timeout=30)
    return rx.returncode, out, err


NOTHING_TO_VERIFY = {                   # 22.1: what each sender brought, and README's row for it
    "tcp-no-data": ([], "tcp", b"", "rx: a TCP connection that brings no data"),
    "pool-tcp-no-data": (["--pool"], "tcp", b"", "rx: a TCP connection that brings no data"),
    "pool-tcp-15-bytes": (["--pool"], "tcp", b"\xff" * 15, "rx --pool tcp: a stream shorter than one stamp"),
    "udp-20-empty": ([], "udp", [b""] * 20, "rx: UDP datagrams that are all empty"),
    "pool-udp-20-empty": (["--pool"], "udp", [b""] * 20, "rx: UDP datagrams that are all empty"),
}


@pytest.mark.parametrize("case", list(NOTHING_TO_VERIFY))
def test_rx_says_verified_only_about_bytes_it_compared(case):
    rx_args, proto, data, row = NOTHING_TO_VERIFY[case]
    status, out, err = rx_against(rx_args, proto, data)
    example = "15" if "15" in case else "20" if "20" in case else None
    line = readme_line(row, {example: len(data)} if example else {})
    assert (status, one_line(err)) == (1, line)
    got = json.loads(out)["rows"][0]
    assert got["verified"] is None and got["mismatches"] == 0 and got["bytes"] == len(data if proto == "tcp" else b"".join(data))
    assert f"sendzc: {got['error']}" == line
    status, out, err = rx_against(rx_args, proto, data, as_json=False)
    assert status == 1 and not [l for l in out.splitlines() if l.startswith("verified")], out
    assert out.splitlines()[-1].startswith("not verified: ")


def test_rx_udp_verdict_counts_only_the_datagrams_it_compared():
    status, out, err = rx_against([], "udp", [b""] * 2 + [sendzc.pattern(1000)] * 3, as_json=False)
    assert status == 0, err
    assert out.splitlines()[-1] == ("verified: all 3 datagrams are the sender's pattern, intact "
                                    "(2 empty datagrams, nothing to compare)")


OTHER_MODE = {                          # 22.6: data of the other mode, or of neither
    "pool-stamps-into-rx-tcp": ([], "tcp", b"".join(sendzc.stamp(q, 1400) for q in range(50)),
                                "rx: a `--pool` sender into `rx` without `--pool`"),
    "pool-stamps-into-rx-udp": ([], "udp", [sendzc.stamp(q, 1400) for q in range(5)],
                                "rx: a `--pool` sender into `rx` without `--pool`"),
    "pattern-into-rx-pool-tcp": (["--pool"], "tcp", sendzc.pattern(100000), "rx --pool: a sender without `--pool`"),
    "pattern-into-rx-pool-udp": (["--pool"], "udp", [sendzc.pattern(1000)] * 5,
                                 "rx --pool: a sender without `--pool`"),
    "random-into-rx-pool-udp": (["--pool"], "udp", [os.urandom(1000) for _ in range(5)],
                                "rx --pool: a datagram that is neither"),
    "one-byte-into-rx-pool-udp": (["--pool"], "udp", [b"\xff"], "rx --pool: a datagram shorter than one stamp"),
}


@pytest.mark.parametrize("case", list(OTHER_MODE))
def test_rx_names_the_other_modes_data_and_no_bogus_request(case):
    rx_args, proto, data, row = OTHER_MODE[case]
    status, out, err = rx_against(rx_args, proto, data)
    assert (status, one_line(err)) == (1, readme_line(row))
    first = json.loads(out)["rows"][0]["first_mismatch"]
    if "--pool" in rx_args and proto == "udp":
        assert first["request"] is None          # no request number made up from random bytes
        assert first["length"] == len(data[0])


PATTERN_LEN_ = sendzc.PATTERN_LEN     # below it, a rest may run on unseen: no cut to count


def restarting_stream(size, sends, flip=None, cut=False):
    """What the seed's send-zc.c sends over TCP: pattern(size) from the buffer's start, each send.
    cut: as liburing's send-zerocopy -n 8 does it, some sends cut short, their rest coming two
    sends later (several sends in flight on one socket), at cuts of every phase mod 26."""
    buf = sendzc.pattern(size)
    if cut:
        pieces, rests = [], []
        for n in range(sends):
            x = (n * 7919) % size or 1
            pieces.append(buf[:x] if n % 3 == 2 else buf)
            if n % 3 == 2:
                rests.append(buf[x:])
            if n % 3 == 1 and rests:
                pieces.append(rests.pop(0))
        data = bytearray(b"".join(pieces + rests))
    else:
        data = bytearray(buf * sends)
    if flip is not None:
        data[flip] ^= 0x20
    return bytes(data)


@pytest.mark.parametrize("cut", [False, True], ids=["whole-sends", "sends-in-pieces"])
@pytest.mark.parametrize("size", [65435, 1000, 7])
def test_the_verifier_checks_a_restarting_stream_whatever_the_receive_boundaries(size, cut):
    """19.4, in process: receives of 7777 bytes cut the sends anywhere; every byte is still checked."""
    def check(stream):
        v = sendzc.Verifier(sendzc.RX_BUF)
        view, nbytes = memoryview(stream), 0
        for at in range(0, len(stream), 7777):          # as receive() calls it
            k = min(7777, len(stream) - at)
            phase = (nbytes - v.shift) % v.period
            if not v.matches(view[at:at + k], phase):
                v.mismatch(view[at:], k, phase, nbytes, None)
            nbytes += k
        return v
    v = check(restarting_stream(size, 40, cut=cut))
    assert (v.bad, v.size) == (0, size) and (v.cuts > 0 or not cut or size < PATTERN_LEN_)
    flip = size * 30 + size // 2
    v = check(restarting_stream(size, 40, flip, cut))
    assert v.bad == 1 and v.first["offset"] == flip and v.size == size
    if cut and size > 7:                      # a byte that neither runs on nor begins a piece
        stream = bytearray(restarting_stream(size, 40, cut=True))
        stream[size * 20 + size // 3] = ord("!")
        assert check(bytes(stream)).bad == 1


@pytest.mark.parametrize("cut", [False, True], ids=["whole-sends", "sends-in-pieces"])
def test_rx_verifies_a_tcp_stream_that_restarts_the_pattern_at_each_send(cut):
    """19.4: each request sent from the buffer's start (a Python stand-in for the seed's C sender;
    cut: as liburing's send-zerocopy -n 8 sends, measured here: 1884528000 bytes over veth, 28800
    sends of 65435 bytes, 524 of them in pieces, all verified)."""
    size, sends = 65435, 40
    port = free_port()
    rx, _ = start_rx_args("-4", "-p", port, "tcp")
    with reaped(rx):
        send_tcp(port, restarting_stream(size, sends, cut=cut), size)
        out, err = rx.communicate(timeout=30)
    assert rx.returncode == 0, err
    assert f"({size * sends >> 20} MB, {size * sends} bytes)" in out.splitlines()[0]
    verdict = out.splitlines()[-1]
    assert verdict.startswith(
        f"verified: every byte is the sender's pattern, restarted every {size} bytes (each send from "
        f"the start of its buffer, as the seed's send-zc.c and liburing's send-zerocopy send)")
    pieces = re.search(r"; (\d+) sends came in pieces, the rest of each after other sends \(several "
                       r"sends in flight on one TCP socket\)$", verdict)
    assert bool(pieces) == cut


@pytest.mark.parametrize("restarts", [False, True], ids=["stream", "restarting"])
def test_a_real_mismatch_keeps_its_line_in_either_stream(restarts):
    size, flip = 65435, 65435 * 7 + 100
    data = restarting_stream(size, 20, flip) if restarts else bytearray(sendzc.pattern(size * 20))
    if not restarts:
        data[flip] ^= 0x20
    status, out, err = rx_against([], "tcp", bytes(data))
    row = json.loads(out)["rows"][0]
    want = (sendzc.pattern(size) * 20 if restarts else sendzc.pattern(size * 20))[flip]
    restart = f" (restarted every {size} bytes)" if restarts else ""
    assert status == 1 and row["first_mismatch"]["offset"] == flip
    assert one_line(err) == (
        f"sendzc: rx: verification failed: stream byte {flip} is {want ^ 0x20:#04x} where the "
        f"pattern{restart} has {want:#04x} {chr(want)!r} (1 of {row['receives']} receives differ): the "
        f"data changed after the sender handed it over, as when a zero-copy buffer is rewritten "
        f"before its notification")


FULL_DISK = """
import json, os, subprocess, sys
where, tool = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "sztfull", where], check=True)
p = subprocess.run([sys.executable, tool, "bench", "--json", "-t", "0.05", "--batches", "8",
                    "--svg", os.path.join(where, "chart.svg")], capture_output=True, text=True)
print(json.dumps({"status": p.returncode, "out": p.stdout, "err": p.stderr, "files": os.listdir(where)}))
"""


@needs_root
def test_svg_on_a_full_filesystem_leaves_no_file_and_json_names_the_error(tmp_path):
    """22.4: a one-page tmpfs, mounted in a mount namespace of the test's own (gone with it)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to make a private mount namespace")
    full = tmp_path / "full"
    full.mkdir()
    p = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", FULL_DISK,
                        str(full), TOOL], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    if got["status"] == 1 and "no ifb device" in got["err"]:
        pytest.skip(got["err"].strip())
    line = readme_line("a full filesystem under `bench --svg FILE`", {"/mnt/full": full})
    assert got["status"] == 1 and got["err"].splitlines() == [line]
    assert json.loads(got["out"])["error"] == line[len("sendzc: "):]
    assert got["files"] == []                  # no chart, and no temporary left behind
    assert os.listdir(full) == []              # (outside the namespace, the tmpfs never was)


def test_n_above_what_the_host_runs_is_a_usage_line_naming_the_limit():
    """22.2: checked before anything forks (a limit of 64 flows per CPU this process may use)."""
    cpus = len(os.sched_getaffinity(0))
    limit = 64 * cpus
    line = readme_line("-n above what this host runs at once",
                       {"99999999": limit + 1, "128": limit, "2 CPUs": f"{cpus} CPU{'s' if cpus != 1 else ''}"})
    for args in (["-D", "127.0.0.1", "-n", limit + 1, "udp"], ["rx", "-n", limit + 1, "tcp"]):
        p = tool(*args, timeout=20)
        assert (p.returncode, only_line(p), p.stdout) == (2, line, "")


# A user of the tests' own, with no process of its own yet: RLIMIT_NPROC counts a user's
# processes everywhere on the host, so the user nobody (which other tests use) would not do.
FRESH_UID = 64123


def as_fresh_user(args, nproc):
    """The tool as FRESH_UID with RLIMIT_NPROC nproc (set in that child alone), to a UDP socket here."""
    import tempfile
    if not IS_ROOT:
        pytest.skip("needs root to become another user")
    if NOBODY_PYTHON is None:
        pytest.skip("no Python interpreter that any user may run")
    with tempfile.TemporaryDirectory() as d, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        os.chmod(d, 0o755)
        copy = os.path.join(d, "sendzc.py")
        shutil.copy(TOOL, copy)
        os.chmod(copy, 0o644)
        rx.bind(("127.0.0.1", 0))

        def become():
            import resource
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            os.setgroups([])
            os.setgid(FRESH_UID)
            os.setuid(FRESH_UID)
        return subprocess.run([NOBODY_PYTHON, "-I", copy, "-D", "127.0.0.1", "-p", str(rx.getsockname()[1]),
                               *map(str, args), "udp"], cwd=d, capture_output=True, text=True, timeout=60,
                              preexec_fn=become, env={"PATH": "/usr/bin:/bin"})


def test_n_fork_eagain_says_lower_n_or_raise_ulimit_u():
    """22.2: ulimit -u 6 and -n 6: the parent and five flows fill it, the sixth fork is refused."""
    p = as_fresh_user(["-n", 6, "-t", 0.2, "-s", 1400], nproc=6)
    assert (p.returncode, only_line(p)) == (1, readme_line("`-n`: fork() refused (EAGAIN)"))
    assert subprocess.run(["pgrep", "-u", str(FRESH_UID)], capture_output=True).stdout == b""
    p = as_fresh_user(["-n", 7, "-t", 0.2], nproc=6)
    assert (p.returncode, only_line(p)) == (2, "sendzc: -n 7: more flows than this host runs at once "
                                               "(6: `ulimit -u` 6): give -n 6 or less, or raise `ulimit -u`")


def test_n_stops_forking_at_the_first_sigterm_and_reaps_what_it_forked():
    """22.2: SIGTERM as the first flow appears: far fewer than -n flows, each one reported, none left."""
    flows = 60
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        p = subprocess.Popen([sys.executable, TOOL, "--json", "-D", "127.0.0.1", "-p", str(rx.getsockname()[1]),
                              "-n", str(flows), "-t", "5", "-s", "1400", "udp"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with reaped(p):
            deadline = time.monotonic() + 20
            while not children_of(p.pid) and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            p.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            out, err = p.communicate(timeout=30)
            took = time.monotonic() - sent
    assert p.returncode == 143, err
    assert err.splitlines() == [readme_line("`-n`: a signal while the flows are forked")]
    rows = json.loads(out)["rows"]
    assert 1 <= len(rows) < flows and took < 5             # not every flow forked, nor run to -t
    assert all(r["interrupted"] for r in rows) or json.loads(out)["total"]["interrupted"]
    assert children_of(p.pid) == []


# --- the fuzz test's other half: what garbage and empty senders get from every rx mode ---------

FUZZ_RX_MODES = [[], ["--pool"], ["-n", "2"], ["--pool", "-n", "2"], ["--keep"], ["--pool", "--keep"]]


def fuzz_payload(rng, kind, proto):
    """One sender's data: bytes (tcp) or datagrams (udp), none of it the pattern or a stamp."""
    def garbage(n):
        return bytes([0xFF]) + bytes(rng.randrange(256) for _ in range(n - 1))   # not 'a', no stamp
    if kind == "empty":
        return b"" if proto == "tcp" else [b""] * rng.randrange(1, 20)
    if kind == "short":
        return garbage(rng.randrange(1, 16)) if proto == "tcp" else [garbage(rng.randrange(1, 16))]
    return garbage(rng.randrange(16, 5000)) if proto == "tcp" else \
        [garbage(rng.randrange(1, 2000)) for _ in range(rng.randrange(1, 6))]


def test_fuzz_garbage_and_empty_senders_are_never_verified():
    """Every rx mode, fed empty, too short or garbage senders (seeded): no row and no text line
    says "verified" about them, no traceback, status 1 (--keep: 130 at the Ctrl-C that ends it)."""
    import random
    rng = random.Random(FUZZ_SEED)
    for proto, mode, kind in itertools.product(["tcp", "udp"], FUZZ_RX_MODES, ["empty", "short", "garbage"]):
        if "-n" in mode and proto == "udp":
            continue
        as_json = rng.random() < 0.5
        what = f"seed {FUZZ_SEED}: {kind} into rx {' '.join(mode)} {proto} ({'json' if as_json else 'text'})"
        port = free_port(socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
        rx, _ = start_rx_args(*(["--json"] if as_json else []), "-4", "-p", port, *mode, proto)
        with reaped(rx):
            for _ in range(2 if "-n" in mode else 1):
                data = fuzz_payload(rng, kind, proto)
                send_tcp(port, data) if proto == "tcp" else send_udp(port, data)
            if "--keep" in mode:
                time.sleep(sendzc.RX_UDP_IDLE_S + 0.5 if proto == "udp" else 0.5)   # that sender is done
                rx.send_signal(signal.SIGINT)
            out, err = rx.communicate(timeout=30)
        assert "Traceback" not in err, f"{what}\n{err}"
        assert rx.returncode == (130 if "--keep" in mode else 1), f"{what}: status {rx.returncode}\n{err}"
        if as_json:
            docs = [json.loads(line) for line in out.splitlines() if line.strip()] if "--keep" in mode \
                else [json.loads(out)]
            rows = [r for d in docs for r in d["rows"]] + [d["total"] for d in docs if "total" in d]
            assert rows and not any(r["verified"] for r in rows), f"{what}\n{out}"
        else:
            said = [l for l in out.splitlines() if l.startswith("verified") or "every one verified" in l]
            assert said == [], f"{what}\n{out}"


# =============================================================================
# The control connection: one report from both ends (issue 19, issue 22 items 3 and 5)
# =============================================================================

def joined_run(pair, proto, *opts, rx_opts=(), t="1"):
    """`rx --json [rx_opts] proto` in the pair's receiving namespace, the sender `--json -t T opts`
    into it: (the sender's document, its rows[0].receiver, rx's document)."""
    txns, rxns = pair
    port = 8100 + next(_names)
    rx = start_rx("-4", "-p", port, *rx_opts, proto, ns=rxns)
    with reaped(rx):
        tx = tool_json("-4", "-D", PAIR4[1], "-p", port, "-t", t, *opts, proto, ns=txns)
        status, doc, err = finish_rx(rx)
    assert status == 0, err
    return tx, tx["rows"][0]["receiver"], doc


def same_cpu(receiver, rx_row):
    """The receiver's CPU in the sender's report is rx's own getrusage(), as rx printed it."""
    return all(abs(receiver[k] - rx_row[k]) <= 0.0005 for k in ("cpu_user_s", "cpu_sys_s"))   # (rx rounds to ms)


def test_udp_joined_report_accounts_for_every_datagram_sent(pair):
    tx, got, doc = joined_run(pair, "udp")
    sent, rx = tx["rows"][0], doc["rows"][0]
    assert tx["error"] is None and sent["datagrams"] > 0
    assert got["datagrams"] + got["lost"] == sent["datagrams"]            # exactly
    assert got["datagrams"] == rx["datagrams"] > 0 and got["bytes"] == rx["bytes"] == rx["datagrams"] * 65435
    assert got["verified"] is True and rx["verified"] is True and got["mismatches"] == 0
    assert got["dropped"] == rx["dropped"] is not None and got["dropped"] <= got["lost"]
    assert same_cpu(got, rx) and got["cpu_user_s"] + got["cpu_sys_s"] > 0
    assert got["mb_per_cpu_s"] > 0 and got["at"] == f"{PAIR4[1]}:{doc['params']['port']}"
    check_against_readme(got, "### The receiver in a JSON row")


def test_tcp_joined_report_has_every_byte_verified(pair):
    tx, got, doc = joined_run(pair, "tcp")
    sent, rx = tx["rows"][0], doc["rows"][0]
    assert got["bytes"] == sent["bytes"] == rx["bytes"] > 0 and got["missing"] == 0
    assert got["verified"] is True and got["datagrams"] is None and got["lost"] is None
    assert same_cpu(got, rx)
    check_against_readme(got, "### The receiver in a JSON row")


def test_udp_gso_joined_counts_segments_and_rx_coalesces_them(pair):
    tx, got, doc = joined_run(pair, "udp", "-s", 14720, "--gso", 1472)
    sent, rx = tx["rows"][0], doc["rows"][0]
    assert sent["datagrams"] == 10 * sent["requests"] > 0                 # ten segments a send
    assert got["datagrams"] + got["lost"] == sent["datagrams"] and got["verified"] is True
    assert rx["method"] == "recvmsg UDP_GRO" and rx["bytes"] == rx["datagrams"] * 1472


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_pool_stamps_are_announced_and_checked_without_rx_pool(pair, proto):
    """The hello says "stamps": rx checks them although it was started without --pool."""
    tx, got, doc = joined_run(pair, proto, "--pool", "8", "-s", 1400 if proto == "udp" else 65435)
    sent = tx["rows"][0]
    assert got["verified"] is True and got["mismatches"] == 0 and doc["params"]["pool"] is False
    if proto == "udp":
        assert got["datagrams"] + got["lost"] == sent["datagrams"] > 0
    else:
        assert got["bytes"] == sent["bytes"] > 0


def test_flows_each_report_their_share_and_the_total(pair):
    """-n 2 into an rx started without -n: the hello says two flows, and rx takes both."""
    tx, got, doc = joined_run(pair, "tcp", "-n", "2", t="0.5")
    assert sorted(got["flows"]) == sorted(r["bytes"] for r in doc["rows"]) == sorted(r["bytes"] for r in tx["rows"][:2])
    assert got["bytes"] == sum(got["flows"]) == tx["total"]["bytes"] == doc["total"]["bytes"]
    assert tx["total"]["receiver"] == got and got["verified"] is True and got["missing"] == 0


def test_the_text_report_ends_with_the_receivers_line(pair):
    txns, rxns = pair
    port = 8100 + next(_names)
    rx = start_rx("-4", "-p", port, "udp", ns=rxns)
    with reaped(rx):
        p = tool("-4", "-D", PAIR4[1], "-p", port, "-t", "0.5", "udp", ns=txns)
        status, doc, err = finish_rx(rx)
    assert p.returncode == 0 and status == 0, p.stderr + err
    got, sent = doc["rows"][0], int(p.stdout.split("tx=")[1].split()[0])
    last = p.stdout.splitlines()[-1]
    lost = sent - got["datagrams"]
    assert re.fullmatch(
        rf"receiver: {got['datagrams']} of {sent} datagrams \({got['bytes'] >> 20} MB\), {lost} lost "
        rf"\({100 * lost / sent:.2f}%; {got['dropped']} dropped by its full socket buffer\), verified; "
        rf"cpu: sender user \d+\.\d\d s sys \d+\.\d\d s, (\d+|-) MB per CPU-second; "
        rf"receiver user \d+\.\d\d s sys \d+\.\d\d s, (\d+|-) MB per CPU-second",
        last), last


@pytest.mark.parametrize("flag", ["--no-verify", "--discard"])
def test_a_receiver_that_verifies_nothing_is_reported_as_not_verified(pair, flag):
    txns, rxns = pair
    port = 8100 + next(_names)
    rx = start_rx("-4", "-p", port, flag, "tcp", ns=rxns)
    with reaped(rx):
        p = tool("-4", "-D", PAIR4[1], "-p", port, "-t", "0.5", "tcp", ns=txns)
        finish_rx(rx)
    assert p.returncode == 0, p.stderr
    last = p.stdout.splitlines()[-1]
    assert f", not verified ({flag}); cpu: " in last and ", verified" not in last
    tx, got, _ = joined_run(pair, "udp", rx_opts=[flag], t="0.3")
    assert got["verified"] is None and got["unverified"] == flag


def plain_udp_receiver():
    """A UDP socket on loopback that nobody reads, and no TCP listener on its port: (socket, port)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def test_a_plain_udp_receiver_gets_the_seeds_run_plus_one_note_in_time():
    s, port = plain_udp_receiver()
    with s:
        started = time.monotonic()
        p = tool("-D", "127.0.0.1", "-p", port, "-t", "1", "udp")
        took = time.monotonic() - started
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("tx=") and [l for l in lines if "sendzc rx" in l or "receiver:" in l] == [lines[-1]]
    assert lines[-1] == (f"note: no sendzc rx at 127.0.0.1:{port} (TCP port {port} refused the control "
                         f"connection): this report is the sender's alone")
    # The seed's command costs -t, the interpreter's start and at most the control's bounded waits.
    assert took < 1 + 1.5, took


class FakeControlPeer:
    """A TCP listener on loopback that answers sendzc's hello as a broken peer would (behaviour:
    'garbage', 'huge', 'silent', 'version', 'half'), beside a UDP socket on the same port for the data."""

    def __init__(self, behaviour):
        self.behaviour, self.stop = behaviour, threading.Event()
        self.udp, self.port = plain_udp_receiver()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(4)
        self.got = b""
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.listener.accept()
        with conn:
            self.got = conn.recv(4096)
            try:
                if self.behaviour == "garbage":
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                elif self.behaviour == "version":
                    conn.sendall(b'{"control": "sendzc", "version": 99, "type": "ready"}\n')
                elif self.behaviour == "half":
                    conn.sendall(b'{"control": "sendzc", "vers')
                elif self.behaviour == "huge":     # 100 MB, no newline: the sender must not read it all
                    chunk = b"x" * (1 << 20)
                    for _ in range(100):
                        conn.sendall(chunk)
            except OSError:
                self.got += b" (the sender closed it)"
            self.stop.wait(10)

    def close(self):
        self.stop.set()
        self.thread.join(15)
        self.listener.close()
        self.udp.close()


SENDER_FAULTS = {
    "garbage": "sent 'HTTP/1.1 400 Bad Request\\r', which is not JSON on sendzc's control connection "
               "(not `sendzc.py rx`?)",
    "huge": "sent a line longer than 65536 bytes on sendzc's control connection (not `sendzc.py rx`?)",
    "silent": "said nothing in time on sendzc's control connection (not `sendzc.py rx`?)",
    "half": "sent half a line, then nothing on sendzc's control connection (not `sendzc.py rx`?)",
    "version": "speaks control version 99, this sendzc 1: run the same sendzc.py on both hosts",
}


@pytest.mark.parametrize("behaviour", list(SENDER_FAULTS))
def test_a_broken_control_peer_costs_the_sender_one_note_and_half_a_second(behaviour):
    peer = FakeControlPeer(behaviour)
    try:
        started = time.monotonic()
        p = tool("-D", "127.0.0.1", "-p", peer.port, "-t", "1", "udp")
        took = time.monotonic() - started
    finally:
        peer.close()
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert peer.got.startswith(b'{"control":"sendzc","version":1,"type":"hello","proto":"udp"')
    assert p.stdout.splitlines()[-1] == (f"note: the receiver at 127.0.0.1:{peer.port} "
                                         f"{SENDER_FAULTS[behaviour]}: this report is the sender's alone")
    assert took < 1 + 1.5, took


def test_a_tcp_receiver_that_takes_one_connection_gets_the_data_on_it():
    """msg_zerocopy -r, socat, nc -l accept one connection: the unanswered control connection
    carries the data, after the hello line, and the sender's run is the seed's."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port, got = listener.getsockname()[1], []

    def one_connection():
        conn, _ = listener.accept()
        with conn:
            data = b""
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
            got.append(data)
    reader = threading.Thread(target=one_connection)
    reader.start()
    p = tool("-D", "127.0.0.1", "-p", port, "-t", "0.3", "-s", "1000", "tcp")
    reader.join(10)
    listener.close()
    assert p.returncode == 0, p.stderr
    hello, _, data = got[0].partition(b"\n")
    assert json.loads(hello)["type"] == "hello"
    assert data == sendzc.pattern(len(data)) and len(data) == int(p.stdout.split("(")[0].split("=")[1]) * 1000
    assert p.stdout.splitlines()[-1] == (
        f"note: the receiver at 127.0.0.1:{port} said nothing in time on sendzc's control connection "
        f"(not `sendzc.py rx`?): the data went over that connection, after the {len(hello) + 1}-byte "
        f"hello line: this report is the sender's alone".replace("line: this", "line; this"))


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_rx_killed_mid_run_the_sender_reports_its_own_and_the_receivers_missing(pair, proto):
    txns, rxns = pair
    port = 8100 + next(_names)
    rx = start_rx("-4", "-p", port, proto, ns=rxns)
    with reaped(rx):
        tx = subprocess.Popen(["ip", "netns", "exec", txns, sys.executable, TOOL, "-4", "-D", PAIR4[1],
                               "-p", str(port), "-t", "3", "-s", "1400", "-i", "0.2", proto],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with reaped(tx):
            first = tx.stdout.readline()            # an interval line: the run is under way
            rx.kill()
            out, err = tx.communicate(timeout=15)
    assert first.startswith("[") and tx.returncode == 1 and "Traceback" not in err, first + err
    assert int(out.split("tx=")[1].split()[0]) > 0                                # its own result
    assert re.search(rf"^note: the receiver's result is missing: rx at {re.escape(PAIR4[1])}:{port} "
                     rf"(closed|reset) the control connection.*\(did it stop\?\)$", out, re.M), out
    assert len(err.splitlines()) == 1, err                                        # one line: why it failed


def fake_sender(port, payload, hold=0.0):
    """Open a control connection to rx on loopback, send payload, wait hold seconds: rx's answer."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        try:
            if callable(payload):
                payload(s)
            else:
                s.sendall(payload)
        except OSError:
            pass                        # rx closed it in the middle: what it should do
        time.sleep(hold)
        s.settimeout(5)
        try:
            return s.recv(4096)
        except OSError:
            return b""


def hundred_megabytes(s):
    for _ in range(100):
        s.sendall(b"{" + b"x" * ((1 << 20) - 1))


RX_FAULTS = {   # what a bad sender sends: (rx's line about it, what rx answers)
    "garbage": (b"{this is no JSON\n", "sent '{this is no JSON', which is not JSON", b""),
    "huge": (hundred_megabytes, "sent a line longer than 65536 bytes", b""),
    "version": (b'{"control": "sendzc", "version": 2, "type": "hello"}\n',
                "speaks control version 2, this sendzc 1: run the same sendzc.py on both hosts",
                b'{"control":"sendzc","version":1,"type":"refused","why":"it speaks control version 1: '
                b'run the same sendzc.py on both hosts"}\n'),
    "silent": (b"", "said nothing in time", b""),
}


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("fault", list(RX_FAULTS))
def test_rx_turns_a_broken_control_peer_away_in_one_line_and_serves_the_next(proto, fault):
    if proto == "tcp" and fault == "silent":
        pytest.skip("a TCP connection that says nothing is a sender that sends nothing: rx waits for "
                    "its data as for any (its first byte tells control from data)")
    port = free_port()
    rx = start_rx("-p", port, proto)
    with reaped(rx):
        payload, line, answer = RX_FAULTS[fault]
        assert fake_sender(port, payload, hold=0.0) == answer
        tx = tool_json("-D", "127.0.0.1", "-p", port, "-t", "0.3", proto)
        status, doc, err = finish_rx(rx)
    assert status == 0, err
    rx_lines = [l for l in err.splitlines() if "waiting for" not in l]
    assert len(rx_lines) == 1 and re.fullmatch(
        rf"rx: the sender at 127\.0\.0\.1:\d+ {re.escape(line)}: closed its control connection", rx_lines[0]), err
    assert tx["rows"][0]["receiver"]["bytes"] == doc["rows"][0]["bytes"] > 0


def test_rx_takes_64_flows_at_once():
    """listen(1) overflowed: rx -n 64 took 37 of 64 simultaneous connects and waited for the rest."""
    port = free_port()
    rx = start_rx("-p", port, "-n", "64", "tcp")
    with reaped(rx):
        tx = tool_json("-D", "127.0.0.1", "-p", port, "-n", "64", "-t", "2", "-s", "1000", "tcp", timeout=120)
        status, doc, err = finish_rx(rx, timeout=60)
    assert status == 0, err
    assert len(doc["rows"]) == 64 and doc["total"]["bytes"] == tx["total"]["bytes"] > 0
    assert tx["total"]["receiver"]["bytes"] == tx["total"]["bytes"] and tx["error"] is None


def test_rx_keep_udp_serves_the_next_sender_at_once_and_turns_a_simultaneous_one_away(pair):
    txns, rxns = pair
    port = 8100 + next(_names)
    rx, _ = start_rx_args("--keep", "--json", "-4", "-p", port, "udp", ns=rxns)
    with reaped(rx):
        first = tool_json("-4", "-D", PAIR4[1], "-p", port, "-t", "0.5", "-s", "1400", "udp", ns=txns)
        second = tool_json("-4", "-D", PAIR4[1], "-p", port, "-t", "0.5", "-s", "1400", "udp", ns=txns)   # right after
        docs = [read_doc(rx), read_doc(rx)]
        long_run = subprocess.Popen(["ip", "netns", "exec", txns, sys.executable, TOOL, "-4", "-D", PAIR4[1],
                                     "-p", str(port), "-t", "2", "-s", "1400", "--json", "udp"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with reaped(long_run):
            time.sleep(1)
            turned = tool("-4", "-D", PAIR4[1], "-p", port, "-t", "0.5", "-s", "1400", "udp", ns=txns)
            out, _ = long_run.communicate(timeout=20)
        docs.append(read_doc(rx))
        stop_keep_rx_err = ctrl_c(rx)[1]
    for sent, doc in zip([first, second, json.loads(out)], docs):
        got = sent["rows"][0]["receiver"]
        assert got["datagrams"] == doc["rows"][0]["datagrams"] > 0 and got["verified"] is True
    assert turned.returncode == 1 and turned.stdout == ""
    busy = readme_pattern("the receiver is busy", {"10.0.0.2": re.escape(PAIR4[1]), "8000": str(port),
                                                   "10.0.0.3:41234": re.escape(PAIR4[0]) + r":\d+"})
    assert busy.fullmatch(only_line(turned)), turned.stderr
    assert re.search(rf"^rx: turned away the sender at {re.escape(PAIR4[0])}:\d+: busy with "
                     rf"{re.escape(PAIR4[0])}:\d+ \(one sender at a time\)$", stop_keep_rx_err, re.M)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_bench_to_rx_keep_runs_every_row_and_rx_counts_each(pair, proto):
    """bench -D says hello before every row, as a single run does, so rx --keep counts each row
    and ends it at the sender's "done": the next row from a fresh socket is served, not refused."""
    txns, rxns = pair
    port = 8100 + next(_names)
    rx, _ = start_rx_args("--keep", "--json", "-4", "-p", port, proto, ns=rxns)
    with reaped(rx):
        p = tool("bench", "--json", "-4", "-D", PAIR4[1], "-p", port, "-t", "0.2", "--sizes", "1400",
                 "--batches", "8", proto, ns=txns, timeout=120)
        assert p.returncode == 0, p.stderr
        rows = json.loads(p.stdout)["rows"]
        docs = [read_doc(rx) for _ in rows]         # one per row: rx ended each at its "done"
        ctrl_c(rx)
    assert len(rows) == 7
    for row, doc in zip(rows, docs):
        got = row["receiver"]
        assert got["verified"] is True and got["bytes"] == doc["rows"][0]["bytes"] > 0, row["mode"]
        if proto == "udp":                          # every datagram sent is received or counted lost
            assert got["datagrams"] + got["lost"] == row["datagrams"], row["mode"]
        else:
            assert got["bytes"] == row["bytes"] and got["missing"] == 0, row["mode"]


def test_bench_to_an_rx_that_served_one_run_says_to_keep_it(pair):
    txns, rxns = pair
    port = 8100 + next(_names)
    rx = start_rx("-4", "-p", port, "udp", ns=rxns)
    with reaped(rx):
        p = tool("bench", "-4", "-D", PAIR4[1], "-p", port, "-t", "0.2", "--sizes", "1400", "--batches", "8",
                 "udp", ns=txns, timeout=60)
        status, doc, _ = finish_rx(rx)
    assert status == 0 and doc["rows"][0]["verified"] is True
    assert p.returncode == 1
    assert only_line(p) == readme_line("`bench -D` against an `rx` without `--keep`", at(PAIR4[1], port))
    # The row it did count is in the report, with its receiver
    assert re.search(r"^receiver at .*, row by row:\n  send\(2\), batch 1, 1400 B: \d+ of \d+ datagrams",
                     p.stdout, re.M), p.stdout


def test_a_failed_check_at_the_receiver_fails_the_sender(pair):
    """A --pool sender into an rx told the data is the pattern (an older hello): rx's check fails,
    and the sender exits 1 with rx's line."""
    txns, rxns = pair
    port = 8100 + next(_names)
    rx = start_rx("-4", "-p", port, "tcp", ns=rxns)
    with reaped(rx):
        hello = {"control": "sendzc", "version": 1, "type": "hello", "proto": "tcp", "data": "pattern",
                 "flows": 1}
        script = textwrap.dedent(f"""
            import json, socket, sys
            sys.path.insert(0, {HERE!r})
            import sendzc
            with socket.create_connection(({PAIR4[1]!r}, {port})) as ctl:
                ctl.sendall(json.dumps({hello!r}).encode() + b"\\n")
                assert json.loads(ctl.recv(4096))["type"] == "ready"
                with socket.create_connection(({PAIR4[1]!r}, {port})) as data:
                    data.sendall(b"abcdefghijklmnopqrstuvwxyzabcX")
                ctl.sendall(sendzc.control_line("done", bytes=30, datagrams=None, requests=1))
                print(ctl.recv(65536).decode(), end="")
        """)
        p = subprocess.run(["ip", "netns", "exec", txns, sys.executable, "-c", script],
                           capture_output=True, text=True, timeout=30)
        status, doc, err = finish_rx(rx)
    assert p.returncode == 0, p.stderr
    msg = json.loads(p.stdout)
    assert msg["type"] == "result" and msg["verified"] is False and msg["bytes"] == 30
    sent = sendzc.Result("send_zc_fixed", "tcp", 30, 1, requests=1, bytes=30)
    sent.receiver = sendzc.joined(sent, msg, f"{PAIR4[1]}:{port}")
    assert sendzc.receiver_failure(sent) == f"the receiver at {PAIR4[1]}:{port} says: {doc['rows'][0]['error']}"
    assert status == 1


@pytest.mark.parametrize("behaviour", ["plain", "silent", "huge"])
def test_the_sender_leaves_no_fd_or_thread_whatever_the_control_peer_does(capsys, behaviour):
    fds, threads = open_fds(), threading.active_count()     # before the peer (its fds are this process's)
    peer = FakeControlPeer(behaviour) if behaviour != "plain" else None
    s, port = plain_udp_receiver() if peer is None else (None, peer.port)
    try:
        status, out, err = main_in_process(capsys, "-D", "127.0.0.1", "-p", port, "-t", "0.2", "-s", "1000", "udp")
    finally:
        peer.close() if peer else s.close()
    assert (open_fds(), threading.active_count()) == (fds, threads)
    assert status == 0 and err == [] and out.splitlines()[-1].startswith("note: ")


def test_rx_leaves_no_fd_or_thread_after_a_controlled_sender_and_one_turned_away(capsys):
    """rx udp in this process (its doorman thread, control listener and connections), a sender
    and a second one during the first: afterwards only what was open before."""
    port = free_port()
    later = [subprocess.Popen(["sh", "-c", f"sleep {delay}; exec {sys.executable} {TOOL} -D 127.0.0.1 "
                                           f"-p {port} -t {t} -s 1000 udp"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for delay, t in ((1, 1.5), (1.8, 0.2))]
    fds, threads = open_fds(), threading.active_count()
    try:
        status, out, err = main_in_process(capsys, "rx", "-p", port, "udp")
        assert (open_fds(), threading.active_count()) == (fds, threads)
    finally:
        results = [p.communicate(timeout=30) for p in later]
    assert status == 0 and out.splitlines()[-1].startswith("verified: all ")
    assert later[0].returncode == 0 and results[0][0].splitlines()[-1].startswith("receiver: ")
    assert later[1].returncode == 1 and "is busy with another sender" in results[1][1]
    assert any(line.startswith("rx: turned away the sender at 127.0.0.1:") for line in err)


def test_tcp_bytes_missing_at_the_receiver_fail_the_sender_in_one_line():
    """A receiver whose result says fewer bytes than were sent (here a fake one that says so):
    exit 1, the line says how many, and the JSON document's error is that line."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]

    def short_receiver():
        ctl, _ = listener.accept()
        with ctl:
            sendzc.read_line(ctl, time.monotonic() + 5)
            ctl.sendall(sendzc.control_line("ready"))
            data, _ = listener.accept()
            with data:
                got = sum(iter(lambda: len(data.recv(1 << 20)), 0))
            sendzc.read_line(ctl, time.monotonic() + 5)
            ctl.sendall(sendzc.control_line("result", bytes=got - 1000, datagrams=None, dropped=None,
                                            verified=True, mismatches=0, seconds=0.2, cpu_user_s=0.01,
                                            cpu_sys_s=0.02, error=None))
    fake = threading.Thread(target=short_receiver)
    fake.start()
    try:
        p = tool("--json", "-D", "127.0.0.1", "-p", port, "-t", "0.2", "-s", "1000", "tcp")
    finally:
        fake.join(20)
        listener.close()
    doc = json.loads(p.stdout)
    sent = doc["rows"][0]["bytes"]
    line = readme_line("TCP bytes missing at the receiver", {**at("127.0.0.1", port), "4213489520": sent - 1000,
                                                             "4213490520": sent, "1000": 1000})
    assert p.returncode == 1 and only_line(p) == line and doc["error"] == line[len("sendzc: "):]
    assert doc["rows"][0]["receiver"]["missing"] == 1000


def test_a_receiver_that_refuses_the_run_ends_it_before_any_data():
    """-n 2 udp into rx udp: every UDP flow would arrive on rx's one socket; rx says no at the hello."""
    port = free_port()
    rx = start_rx("-p", port, "udp")
    with reaped(rx):
        p = tool("-D", "127.0.0.1", "-p", port, "-n", "2", "-t", "0.3", "udp")
        ctrl_c(rx)
    assert p.returncode == 1 and p.stdout == ""
    assert only_line(p) == readme_line("the receiver refuses the run", at("127.0.0.1", port))


def test_a_receiver_whose_result_never_comes_fails_the_run_in_one_line():
    """rx said ready, took the data, then closed the control connection without a result."""
    s, port = plain_udp_receiver()
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen(1)

    def ready_then_gone():
        conn, _ = listener.accept()
        with conn:
            sendzc.read_line(conn, time.monotonic() + 5)
            conn.sendall(sendzc.control_line("ready"))
            sendzc.read_line(conn, time.monotonic() + 10)      # "done": and then nothing but a close
    fake = threading.Thread(target=ready_then_gone)
    fake.start()
    try:
        p = tool("-D", "127.0.0.1", "-p", port, "-t", "0.2", "-s", "1000", "udp")
    finally:
        fake.join(20)
        listener.close()
        s.close()
    line = readme_line("the receiver's result never comes", at("127.0.0.1", port))
    assert p.returncode == 1 and only_line(p) == line
    assert p.stdout.splitlines()[-1] == "note: " + line[len("sendzc: "):]


def test_rx_keep_tcp_busy_a_second_sender_falls_back_and_is_served_next_verified():
    """rx --keep tcp answers nobody while it serves a sender: a second one's hello waits unanswered,
    so it sends its stream on that connection, after the hello; rx serves it next, checked from
    the byte after the line."""
    port = free_port()
    rx = keep_rx("-p", port, "tcp")
    with reaped(rx):
        first = subprocess.Popen([sys.executable, TOOL, "-D", "127.0.0.1", "-p", str(port), "-i", "0.2",
                                  "-t", "1.5", "-s", "1000", "tcp"], stdout=subprocess.PIPE, text=True)
        with reaped(first):
            assert first.stdout.readline().startswith("[")      # an interval line: rx is busy with it
            second = tool("--json", "-D", "127.0.0.1", "-p", port, "-t", "0.3", "-s", "1000", "tcp")
            first_out = first.communicate(timeout=20)[0]
        docs = [read_doc(rx), read_doc(rx)]
        stop_keep_rx(rx)
    assert first.returncode == 0 and ", verified; cpu: " in first_out.splitlines()[-1]
    sent = json.loads(second.stdout)["rows"][0]
    assert second.returncode == 0 and "receiver" not in sent
    assert "the data went over that connection, after the" in sent["receiver_note"]
    got = docs[1]["rows"][0]
    assert got["bytes"] == sent["bytes"] > 0 and got["verified"] is True
