"""The chaos soak: real traffic while a seeded RNG kills, stops and cuts everything, then the invariants.

Where the drills break one thing at one scripted moment, the soak breaks many
things at moments nobody chose, while the load generator (``drill_driver.py
load``) keeps sending checkouts, scripted payments, password resets, exports and
cancellations through the web process. Beat runs its schedule throughout.

One run:

1. ``soak-setup``: customers, and export owners with 0 to 12,000 transactions.
2. Load for ``seconds``, and at the same time faults every 1.5 to 4.5 seconds
   (``FAULTS``), each logged with its time. The RNG is seeded: the same seed
   picks the same faults (every kind once, then again in another order) in the
   same order, and the same operations. What the processes are doing at that
   moment still differs from run to run. After each fault every process is
   started again, as a process manager would.
3. A quiet period: no load, no faults. Retries finish, beat's watchdog resumes
   exports, and reconciliation (run every 20 s here, as cron would run it; beat
   runs it every 5 minutes) sends payments nobody is settling again.
4. The invariants (``violations``), on durable evidence only: rows, the provider's
   ledger, email files, export files, beat's log.

``tests/drills/test_soak.py`` runs it briefly with a fixed seed; ``benchmarks/soak.py``
runs it for 30 minutes or more with a random seed. docs/chaos-soak.md explains it.
"""

import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path

from .conftest import WORKER_POOLS, Pools, Project, RedisServer
from .test_schedule_beat_restart import sends

# Everything the soak runs: every Procfile process.
SOAK_PROCESSES = (*WORKER_POOLS, "beat", "outbox-relay", "web", "flower")
# Seconds a SIGSTOPped pool stays stopped: past the export lease (3 s in the
# drills' settings), so its exports are taken over while it sleeps.
PAUSE_SECONDS = 5


@dataclass
class Soak:
    project: Project
    pools: Pools
    redis: RedisServer
    seed: int
    seconds: float
    quiet_seconds: float = 240
    workdir: Path = field(default_factory=Path)
    faults: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        self.fault_log = self.workdir / f"soak-{self.seed}-faults.jsonl"
        self.load_log = self.workdir / f"soak-{self.seed}-load.jsonl"

    # --------------------------------------------------------------------------
    # Faults
    # --------------------------------------------------------------------------
    def fault(self, name: str, target: str, action, detail: str = "") -> None:
        entry = {"t": round(time.monotonic() - self.started, 3), "kind": self.kind, "fault": f"{name}: {target}"}
        entry["detail"] = detail
        self.faults.append(entry)
        with self.fault_log.open("a") as log:
            log.write(json.dumps(entry) + "\n")
        print(f"[soak {entry['t']:7.1f}s] {entry['fault']} {detail}", flush=True)
        action()

    def children(self, name: str) -> list[int]:
        """The pool processes (prefork children) of a running pool."""
        pid = self.pools.processes[name].pid
        try:
            return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def kill_child(self) -> None:
        name = self.rng.choice(WORKER_POOLS)
        children = self.children(name)
        if children:
            child = self.rng.choice(children)
            self.fault("SIGKILL one pool process", name, lambda: _kill(child, signal.SIGKILL), f"pid {child}")

    def signal_process(self, name: str, sig: signal.Signals, whole_group: bool) -> None:
        what = f"{sig.name} {'the process group' if whole_group else 'the main process'}"

        def act():
            process = self.pools.processes[name]
            try:
                os.killpg(process.pid, sig) if whole_group else os.kill(process.pid, sig)
            except ProcessLookupError:
                return
            # A SIGTERMed pool finishes (soft shutdown) within its time limits.
            process.wait(timeout=120)

        self.fault(what, name, act)

    def term_pool(self) -> None:
        self.signal_process(self.rng.choice(WORKER_POOLS), signal.SIGTERM, whole_group=False)

    def kill_pool(self) -> None:
        self.signal_process(self.rng.choice(WORKER_POOLS), signal.SIGKILL, whole_group=True)

    def kill_beat(self) -> None:
        sig = self.rng.choice([signal.SIGTERM, signal.SIGKILL])
        self.signal_process("beat", sig, whole_group=sig == signal.SIGKILL)

    def kill_web(self) -> None:
        self.signal_process("web", signal.SIGKILL, whole_group=True)

    def kill_relay(self) -> None:
        self.signal_process("outbox-relay", signal.SIGKILL, whole_group=True)

    def restart_redis(self) -> None:
        def act():
            self.redis.crash()
            time.sleep(self.rng.uniform(0.5, 3))
            self.redis.start()

        self.fault("SIGKILL and restart", "redis", act)

    def cut_postgres(self) -> None:
        statement = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()"
        )
        self.fault(
            "pg_terminate_backend every connection",
            "postgres",
            lambda: self.project.sql(statement, [self.project.database]),
        )

    def pause_pool(self) -> None:
        name = self.rng.choice(WORKER_POOLS)

        def act():
            group = self.pools.processes[name].pid
            os.killpg(group, signal.SIGSTOP)
            time.sleep(PAUSE_SECONDS)
            os.killpg(group, signal.SIGCONT)

        self.fault(f"SIGSTOP the process group for {PAUSE_SECONDS}s", name, act)

    # Dealt like cards: every kind once, in a seeded order, then the deck is shuffled
    # again. A short run sees every kind; the targets are drawn at random.
    FAULTS = (
        "kill_child",
        "term_pool",
        "kill_pool",
        "pause_pool",
        "kill_beat",
        "kill_web",
        "kill_relay",
        "restart_redis",
        "cut_postgres",
    )

    def next_fault(self):
        if not self.deck:
            self.deck = self.rng.sample(self.FAULTS, len(self.FAULTS))
        self.kind = self.deck.pop()
        return getattr(self, self.kind)

    # --------------------------------------------------------------------------
    # The run
    # --------------------------------------------------------------------------
    def run(self) -> dict:
        self.pools.heal(SOAK_PROCESSES)
        setup = self.project.driver("soak-setup")
        beat_log_start = self.pools.log_path("beat").stat().st_size
        mail_before = set(self.mail_dir.glob("*")) if self.mail_dir.exists() else set()
        first_dead_letter = self.project.scalar("SELECT coalesce(max(id), 0) FROM core_failedtask")

        self.started = time.monotonic()
        web = f"http://127.0.0.1:{self.project.env['PORT']}"
        command = ["python", "drill_driver.py", "load", "--web", web, "--seconds", str(self.seconds)]
        command += ["--seed", str(self.seed), "--log", str(self.load_log)]
        load = self.pools.spawn_helper(command, "load")
        self.deck = []
        while load.poll() is None and time.monotonic() - self.started < self.seconds:
            time.sleep(self.rng.uniform(1.5, 4.5))
            if time.monotonic() - self.started >= self.seconds:
                break
            self.next_fault()()
            self.pools.heal(SOAK_PROCESSES)
        load.wait(timeout=self.seconds + 300)
        assert load.returncode == 0, f"the load generator failed:\n{self.pools.log('load')[-5000:]}"
        loaded = time.monotonic()

        self.pools.heal(SOAK_PROCESSES)
        settled = self.quiet()
        self.pools.heal(SOAK_PROCESSES)  # every process is running again
        self.pools.wait_until_ready(SOAK_PROCESSES)
        state = self.project.driver("soak-state")
        mail = [path for path in self.mail_dir.glob("*") if path not in mail_before]
        beat_log = self.pools.log_path("beat").read_bytes()[beat_log_start:].decode(errors="replace")
        operations = [json.loads(line) for line in self.load_log.read_text().splitlines()]
        violations = check(state, operations, mail, beat_log, setup["references"], first_dead_letter)
        return {
            "seed": self.seed,
            "seconds": self.seconds,
            "quiet_seconds": round(time.monotonic() - loaded, 1),
            "settled": settled,
            "faults": dict(Counter(entry["fault"] for entry in self.faults)),
            "fault_count": len(self.faults),
            "fault_kinds": sorted({entry["kind"] for entry in self.faults}),
            "operations": dict(Counter(entry["op"] for entry in operations)),
            "outcomes": outcomes(state),
            # Messages, not files: two connections of one process in the same second can get
            # the same file name from Django's file backend (time and id()), which appends.
            "emails": sum(recipients(mail).values()),
            "violations": violations,
            "fault_log": str(self.fault_log),
            "load_log": str(self.load_log),
        }

    @property
    def mail_dir(self) -> Path:
        return Path(self.project.env["DJANGO_EMAIL_FILE_PATH"])

    def quiet(self) -> bool:
        """Let retries, the watchdog and reconciliation finish: True once nothing is left in flight."""
        deadline = time.monotonic() + self.quiet_seconds
        reconcile_env = {"PAYMENT_STUCK_AFTER_MINUTES": "1"}
        last_reconcile = 0.0
        while time.monotonic() < deadline:
            if unsettled(self.project.driver("soak-state")) == 0:
                return True
            if time.monotonic() - last_reconcile > 20:
                self.project.run("python", "manage.py", "scheduled", "run", "payment-reconciliation", env=reconcile_env)
                last_reconcile = time.monotonic()
            time.sleep(3)
        return False


def _kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def unsettled(state: dict) -> int:
    """How many things are still on their way: orders, exports, resets, outbox rows."""
    orders = sum(order["status"] in ("pending", "processing", "requires_action") for order in state["orders"])
    exports = sum(job["status"] in ("pending", "running") for job in state["exports"])
    resets = sum(not reset["sent"] for reset in state["resets"])
    return orders + exports + resets + state["outbox_unsent"] + len(state["leases"])


def outcomes(state: dict) -> dict:
    return {
        "orders": dict(Counter(order["status"] for order in state["orders"])),
        "exports": dict(Counter(job["status"] for job in state["exports"])),
        "resets_sent": sum(reset["sent"] for reset in state["resets"]),
    }


def recipients(mail: list[Path]) -> Counter:
    """Emails per address, read from the file backend's files."""
    counted = Counter()
    for path in mail:
        # The file backend writes each message, then a line of dashes.
        for message in path.read_bytes().split(b"\n" + b"-" * 79 + b"\n"):
            if message.strip():
                counted[message_from_bytes(message)["To"]] += 1
    return counted


def check(state, operations, mail, beat_log, references, first_dead_letter) -> list[str]:
    """Every invariant of the issue, as a list of what is wrong (empty: nothing)."""
    violations = []
    # The end each order must reach: its card's, or its provider script's (the load log says which).
    expected = {entry["key"]: entry["expect"] for entry in operations if "expect" in entry}
    scripted = {
        entry["key"]: entry["plan"] for entry in operations if entry["op"] == "scripted-payment" and "key" in entry
    }

    # Orders: PAID with exactly one charge, the one recorded; or FAILED with a reason and no charge.
    for order in state["orders"]:
        charges = state["charges"].get(order["key"], [])
        if order["status"] == "paid":
            if charges != [order["charge_id"]]:
                violations.append(f"order {order['id']} is paid but the ledger has {charges}")
        elif order["status"] == "failed":
            if charges or not order["failure_reason"]:
                violations.append(f"order {order['id']} failed ({order['failure_reason']!r}) with charges {charges}")
        else:
            violations.append(f"order {order['id']} is still {order['status']}")
        end = expected.get(order["key"]) or expected.get(order["submission_key"])
        if end is None:
            violations.append(f"order {order['id']} was made by no operation of the load")
        elif order["status"] in ("paid", "failed") and order["status"] != end:
            violations.append(f"order {order['id']} ended {order['status']}, expected {end}")

    # One order per submitted form, however often it was posted; one for every form that was answered.
    orders_per_submission = Counter(order["submission_key"] for order in state["orders"] if order["submission_key"])
    for entry in operations:
        if entry["op"] != "checkout":
            continue
        count = orders_per_submission.get(entry["key"], 0)
        if count > 1 or (302 in entry["answers"] and count != 1):
            violations.append(f"checkout {entry['key']} answered {entry['answers']} made {count} orders")

    # Password resets: every request sent, one email per request, none to unknown addresses.
    emails = recipients(mail)
    requests = Counter(reset["email"] for reset in state["resets"])
    for reset in state["resets"]:
        if not reset["sent"]:
            violations.append(f"password reset request {reset['id']} for {reset['email']} never sent")
    for address in set(emails) | set(requests):
        if emails[address] > requests[address]:
            violations.append(f"{address}: {emails[address]} emails for {requests[address]} reset requests")
    asked_for_nobody = {
        entry["email"] for entry in operations if entry["op"] == "reset" and "nobody-" in entry["email"]
    }
    if stray := asked_for_nobody & set(emails):
        violations.append(f"emails to addresses nobody has: {sorted(stray)}")

    # Exports: COMPLETED and byte-identical to one plain COPY, FAILED with a reason, or CANCELLED.
    for job in state["exports"]:
        if job["status"] == "completed":
            if Path(job["file"]).read_bytes() != Path(references[job["user"]]).read_bytes():
                violations.append(f"export {job['id']} of {job['user']} differs from a plain COPY of its rows")
        elif job["status"] == "failed":
            if not job["error"]:
                violations.append(f"export {job['id']} failed without a reason")
        elif job["status"] != "cancelled":
            violations.append(f"export {job['id']} is still {job['status']}")
        # Only the finished file may stay in the job's directory: no part files.
        if leftovers := [name for name in job["part_files"] if not (job["file"] or "").endswith(f"/{name}")]:
            violations.append(f"export {job['id']} ({job['status']}) left part files {leftovers}")
    if state["leases"]:
        violations.append(f"export leases still held: {state['leases']}")
    if state["outbox_unsent"]:
        violations.append(f"{state['outbox_unsent']} outbox messages never published")

    # Beat: no schedule entry sent twice in the same minute, across every restart.
    if twice := {f"{minute} {entry}": n for (minute, entry), n in sends(beat_log).items() if n > 1}:
        violations.append(f"beat sent ticks twice: {twice}")

    # Dead letters: each one a real permanent failure of the soak's, never one the faults caused.
    orders_by_id = {order["id"]: order for order in state["orders"]}
    for failed in state["failed_tasks"]:
        if failed["id"] <= first_dead_letter:
            continue
        order = orders_by_id.get(failed["args"][0]) if failed["args"] else None
        plan = scripted.get(order["key"]) if order else None
        if not (failed["task"].endswith("process_payment") and plan in ("reject", "retries_exhausted")):
            violations.append(
                f"dead letter {failed['id']} ({failed['task']} {failed['args']}: {failed['exception']}) has no permanent cause"
            )
    return violations
