#!/usr/bin/env python3
"""perf-stages.py -- the gateway's CPU by pipeline stage, from a `perf record -g` of the gateway (gateway-bench.sh PERF=).

    gateway/bench/perf-stages.py FILE.data [--us-per-alert N] [--top N] [--stage NAME] [--smtp]

Each sample goes to the first stage (in the order of STAGES below) whose pattern matches a frame of its call stack,
else to a bucket by thread. JIT-compiled frames are named from /tmp/perf-PID.map (the bench starts the gateway with
DOTNET_PerfMapEnabled=1, W^X off and ReadyToRun off so that every managed frame is in that map). Native SQLite has no
frame pointers, so a sample inside SQLite keeps no managed caller: it is attributed by its thread (the spool's writer,
its checkpointer, or a reader on a thread-pool thread). With --us-per-alert (the bench's gateway_cpu_us_per_alert of
the same run) shares are also given in microseconds per alert. --top N lists the hottest leaf frames of each stage;
--stage NAME only that stage's. --smtp: the stages of SMTP ingest (smtp-ingest.sh PERF=) instead of the alert pipeline's.
"""
import argparse
import collections
import re
import subprocess
import sys

# (stage, frame pattern). Order matters: the first stage with a matching frame anywhere in the stack wins, so the
# more specific stages come first (DKIM inside composition, re-parsing MIME inside the SMTP client, ...).
STAGES = [
    ("dkim", r"DkimSign|MimeKit\.Cryptography\.Dkim"),
    ("template render (Fluid)", r"\[Fluid[\.\]]|Fluid\.|MailComposer::Render\b.*Fluid"),
    ("MIME build (compose, ToWire)", r"MailComposer::|MessageIds::"),
    ("route (Router, storm, decide)", r"Routing\.Router::|AlertProcessor::Decide"),
    ("route: re-parse stored alert", r"AlertProcessor.*RouteNewAsync.*|AlertParser::.*"),  # refined below by context
    ("SMTP client: re-parse spooled MIME", r"SmtpRelay.*SendOnceAsync.*MimeMessage::Load|MimeParser"),
    ("SMTP client (MailKit, relay)", r"MailKit\.|SmtpRelay|RecordingSmtpClient"),
    ("delivery bookkeeping (worker, results, receipts)", r"DeliveryWorker|ReceiptPublisher|JsonSerializer"),
    ("spool: enqueue/complete (callers)", r"SqliteSpool::Enqueue|SpoolWork"),
    ("SMTP ingest (SmtpServer, submission, relayed-mail rewrite)", r"\[SmtpServer\]|Ingest\.Smtp\."),
    ("accept (MQTT receive, parse, validate)", r"MQTTnet|EmbeddedBroker|AlertIngest|AlertParser"),
    ("routing loop (other)", r"AlertProcessor"),
    ("console/metrics", r"EdgeMail\.Gateway\.Web|OpenTelemetry|GatewayMetrics|PipelineProbe"),
]

# SMTP ingest (smtp-ingest.sh): a device's mail from the SMTP session to the relay.
SMTP_STAGES = [
    ("auth (AUTH, secret verification)", r"SecretVerifier|SecretHash|Pbkdf2|SubmissionPolicy::AuthenticateAsync"),
    ("dkim", r"DkimSign|MimeKit\.Cryptography\.Dkim"),
    ("ingest: rewrite (RelayedMailWriter)", r"RelayedMailWriter"),
    ("ingest: spool insert call", r"SqliteSpool::QueueMail|SqliteSpool::Enqueue"),
    ("ingest: handler (alert parts, recipients, reply)", r"SubmissionHandler"),
    ("ingest: store and policy (MAIL, RCPT)", r"SubmissionStore|SubmissionPolicy|RecipientPolicy"),
    ("ingest: SMTP session (SmtpServer, its socket calls)", r"\[SmtpServer\]"),
    ("relay: MIME parse", r"MimeParser|MimeMessage::Load"),
    ("relay: MailKit prepare", r"::Prepare\(|MimeMessage::Prepare|MimePart::Prepare"),
    ("relay: MailKit send", r"MailKit\.|SmtpRelay|RecordingSmtpClient"),
    ("delivery bookkeeping (worker, results)", r"DeliveryWorker|ReceiptPublisher|JsonSerializer"),
    ("console/metrics", r"EdgeMail\.Gateway\.Web|OpenTelemetry|GatewayMetrics|PipelineProbe"),
]

THREAD_BUCKETS = [
    ("spool-writer", "commit: spool writer thread (inserts, updates, fsync)"),
    ("spool-checkpoi", "WAL checkpoint thread"),
    (".NET Tiered Com", "JIT (tiered compilation thread)"),
    (".NET BGC", "GC (background)"),
    (".NET Sockets", "socket event loop"),
]


def parse(path):
    """Yields (comm, [frames leaf first], period)."""
    out = subprocess.run(["perf", "script", "-i", path, "-F", "comm,tid,period,ip,sym,dso"],
                         capture_output=True, text=True, check=True).stdout
    comm, period, frames = None, 0, []
    head = re.compile(r"^(\S.*?)\s+(\d+)\s+(\d+)\s*$")
    for line in out.splitlines():
        if not line.strip():
            if comm is not None:
                yield comm, frames, period
            comm, frames = None, []
            continue
        if not line.startswith("\t") and not line.startswith(" "):
            m = head.match(line)
            if m:
                comm, period = m.group(1).strip(), int(m.group(3))
            continue
        frames.append(line.strip().split(" ", 1)[1] if " " in line.strip() else line.strip())
    if comm is not None:
        yield comm, frames, period


def classify(comm, frames, compiled):
    stack = "\n".join(frames)
    managed = [f for f in frames if "perf-" in f and ".map" in f]
    if comm.startswith("spool-writer"):
        # The writer thread runs every kind of spool work; its own managed frames say which when they are there.
        return "commit: spool writer thread (inserts, updates, fsync)"
    if comm.startswith("spool-checkpoi"):
        return "WAL checkpoint thread"
    if comm.startswith("edgemail-spool-"):
        # Before the two threads had names of their own (and 15 characters of a name is all Linux keeps).
        return "commit: spool writer and WAL checkpoint threads (one name)"
    for name, rx in compiled:
        if name.startswith("route: re-parse"):
            if "AlertParser::" in stack and "AlertProcessor" in stack:
                return name
            continue
        if name.startswith("SMTP client: re-parse"):
            if "MimeParser" in stack and ("SmtpRelay" in stack or "MimeMessage::Load" in stack):
                return name
            continue
        if rx.search(stack):
            return name
    if "libe_sqlite3" in stack:
        return "spool reads (SQLite on a pool thread)"
    if "libclrjit" in stack:
        return "JIT"
    for prefix, name in THREAD_BUCKETS:
        if comm.startswith(prefix):
            return name
    if not managed:
        return "runtime/kernel without managed frames (thread pool, GC, scheduling)"
    return "other managed"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--us-per-alert", type=float)
    ap.add_argument("--top", type=int, default=0)
    ap.add_argument("--stage")
    ap.add_argument("--smtp", action="store_true")
    a = ap.parse_args()
    compiled = [(n, re.compile(rx)) for n, rx in (SMTP_STAGES if a.smtp else STAGES)]
    total = 0
    by_stage = collections.Counter()
    leaves = collections.defaultdict(collections.Counter)
    for comm, frames, period in parse(a.data):
        stage = classify(comm, frames, compiled)
        by_stage[stage] += period
        total += period
        if frames:
            leaf = next((f for f in frames if "perf-" in f and ".map" in f), frames[0])
            leaves[stage][re.sub(r"\s*\(/.*\)$", "", leaf)[:150]] += period
    if total == 0:
        sys.exit("no samples")
    print(f"{'stage':58} {'share':>7}" + (f" {'us/alert':>9}" if a.us_per_alert else ""))
    for stage, p in by_stage.most_common():
        share = p / total
        print(f"{stage:58} {share:7.1%}" + (f" {share * a.us_per_alert:9.0f}" if a.us_per_alert else ""))
        if a.top and (a.stage is None or a.stage == stage):
            for leaf, lp in leaves[stage].most_common(a.top):
                print(f"    {lp / total:6.1%}  {leaf}")
    print(f"{'total':58} {1:7.1%}" + (f" {a.us_per_alert:9.0f}" if a.us_per_alert else "") + f"   ({total / 1e9:.1f} s of CPU sampled)")


if __name__ == "__main__":
    main()
