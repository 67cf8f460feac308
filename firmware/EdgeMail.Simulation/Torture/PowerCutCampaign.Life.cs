using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using EdgeMail.Firmware;
using EdgeMail.Firmware.Alerts;
using EdgeMail.Firmware.Storage;
using EdgeMail.Simulation.Flash;

namespace EdgeMail.Simulation.Torture;

public sealed partial class PowerCutCampaign
{
    private static readonly byte[] MarkerCode = System.Text.Encoding.ASCII.GetBytes(AlertStore.DroppedCode);

    [GeneratedRegex(@"sequence numbers (\d+) to (\d+)")]
    private static partial Regex MarkerRange();

    /// <summary>What an uplink saw of one alert handed out by the store.</summary>
    private readonly record struct Sent(uint IdSeq, uint Seq, uint Token, uint Count, bool IsMarker, uint Dropped, uint First, uint Last);

    /// <summary>A record as the queue hands it out.</summary>
    private readonly record struct RawItem(uint Seq, uint OriginalSeq, uint AlertId, uint Token, uint Count, byte Priority);

    /// <summary>One device on one flash, with the model of what it owes, driven step by step and checked as it goes.</summary>
    private sealed class Life(PowerCutCampaign owner, NorFlashSimulator flash, ReferenceModel model, string where, int seed)
    {
        private readonly byte[] _json = new byte[AlertJsonWriter.MaxLength];
        private readonly OutgoingAlert _outgoing = new();
        private uint _passHigh;
        private readonly Clock _clock = new();
        private readonly Random _random = new(seed);
        private FlashQueue? _queue;
        private AlertStore? _store;
        private int _cutsLeft;

        public NorFlashSimulator Flash { get; } = flash;

        public ReferenceModel Model { get; } = model;

        public string Where { get; set; } = where;

        public (Step Kind, uint Token, int Code, long Uptime) InFlight { get; set; }

        public long Steps { get; private set; }

        public long DroppedReported { get; private set; }

        private FlashQueue Queue => _queue!;

        private AlertStore Store => _store!;

        private CampaignOptions Options => owner._options;

        /// <summary>Mounts the queue on flash that was not cut (start of the workload, clean reboots).</summary>
        public void Boot()
        {
            InFlight = (Step.Reboot, 0, 0, 0);
            _clock.UptimeMs = 1_000;
            _queue = new FlashQueue(Flash, Options.Policy);
            bool found = _queue.Mount(0x5EED0000u ^ (uint)Options.Seed ^ Model.Boot);
            owner.MountsChecked++;
            if (!Model.Formatted)
            {
                Model.Formatted = true;
                Model.Epoch = _queue.Epoch;
            }
            else if (!found || _queue.Epoch != Model.Epoch)
            {
                Fail("formatted", $"the mount formatted the queue (epoch {_queue.Epoch:x8}, was {Model.Epoch:x8})");
            }

            if (_queue.NextSeq <= Model.MaxSeqSeen || _queue.NextSeq <= _queue.AckedThrough)
            {
                Fail("sequence reused", $"after the mount the next sequence number is {_queue.NextSeq}: {Model.MaxSeqSeen} was already used, {_queue.AckedThrough} acknowledged");
            }

            _store = new AlertStore(_queue, _clock, new WallClock(_clock), Model.Boot);
        }

        /// <summary>Mounts and compares everything on flash with the model.</summary>
        public void BootAndCheck()
        {
            Boot();
            FullCheck();
        }

        /// <summary>Power came back after a cut: settle the operation it struck, mount, compare, and live on.</summary>
        public void LiveOn(int steps, double secondCutRate)
        {
            AfterCut();
            _cutsLeft = _random.NextDouble() < secondCutRate ? 1 : 0;
            if (_cutsLeft > 0)
            {
                Flash.ScheduleCut(_random.Next(0, 24), Workload.RandomCut(_random, _random.Next(4) == 0));
            }

            string origin = Where;
            for (int i = 0; i < steps; i++)
            {
                WorkStep step = Workload.NextAfterCut(_random);
                Where = string.Create(CultureInfo.InvariantCulture, $"{origin}, then step {i} ({step.Kind})");
                try
                {
                    Do(step);
                }
                catch (PowerLossException)
                {
                    Where += " cut again";
                    AfterCut();
                }

                Steps++;
                if (Options.Log is TextWriter log)
                {
                    using var copy = Flash.Fork(1);
                    var q = new FlashQueue(copy, Options.Policy);
                    q.Mount(0);
                    var items = Raw(q, out var ms);
                    log.WriteLine($"   after: live {Queue.LiveSectors} next {Queue.NextSeq} acked {Queue.AckedThrough}; on flash {string.Join(" ", items.Select(r => r.Seq == r.OriginalSeq ? $"{r.Seq}" : $"{r.Seq}({r.OriginalSeq})"))} markers {string.Join(" ", ms.Select(m => $"{m.Count}:{m.First}..{m.Last}"))}");
                }
            }

            Flash.CancelCut();
            Where = origin + ", final reboot";
            Flash.PowerOn(_random.Next());
            Model.Rebooted();
            BootAndCheck();
        }

        private void AfterCut()
        {
            while (true)
            {
                var (kind, token, code, uptime) = InFlight;
                if (kind == Step.Raise)
                {
                    Model.MaybeRaised(token, code, uptime);
                }
                else if (kind == Step.AckBatch)
                {
                    Model.Acknowledged(cut: true);
                }

                Flash.PowerOn(_random.Next());
                Model.Rebooted();
                try
                {
                    BootAndCheck();
                    return;
                }
                catch (PowerLossException)
                {
                    Where += " (cut again while mounting)";
                }
            }
        }

        public void Do(WorkStep step)
        {
            Options.Log?.WriteLine($"{Where}: queue next {_queue?.NextSeq} acked {_queue?.AckedThrough} live {_queue?.LiveSectors}");
            switch (step.Kind)
            {
                case Step.Raise:
                    Raise(step.Arg);
                    break;
                case Step.ReadBatch:
                    for (int n = 0; n < 1 + (step.Arg % 4); n++)
                    {
                        if (!Store.TryNext(_outgoing))
                        {
                            break;
                        }

                        Deliver(Parse(_outgoing), inBoot: true);
                    }

                    break;
                case Step.AckBatch:
                    if (Model.Pass.Count > 0)
                    {
                        InFlight = (Step.AckBatch, 0, 0, 0);
                        Store.Acknowledge(Model.Pass[^1].Seq);
                        Model.Acknowledged(cut: false, Queue.AckedThrough);
                    }

                    break;
                case Step.LinkLost:
                    Store.Rewind();
                    Model.Pass.Clear();
                    break;
                case Step.Reboot:
                    Flash.PowerOn(_random.Next()); // cells a cut left weak drift on clean power cycles too
                    Model.Rebooted();
                    BootAndCheck();
                    break;
                case Step.Maintain:
                    InFlight = (Step.Maintain, 0, 0, 0);
                    Store.Maintain();
                    break;
            }
        }

        private void Raise(int arg)
        {
            int code = arg % Workload.Codes.Length;
            _clock.UptimeMs += ((arg >> 3) % 6) switch { 0 => 61_000, 1 => 5_000, _ => 100 };
            int maxText = Math.Min(600, Queue.MaxPayload - 4 - AlertRecord.HeaderSize - 16 - 11 - 10);
            int textLength = (arg >> 6) % Math.Max(1, maxText);
            uint token = Model.NextToken++;
            var (codeName, severity) = Workload.Codes[code];
            var alert = new Alert(codeName, severity, new string('x', textLength));
            alert.AddValue("n", token, 0);
            long uptime = _clock.UptimeMs;
            ModelAlert? into = Model.CoalescesInto(code);
            bool writes = into is null || ReferenceModel.WritesUpdate(into, uptime);
            InFlight = (Step.Raise, token, code, uptime);
            uint seq;
            try
            {
                seq = Store.Raise(alert);
            }
            catch (QueueFullException) when (Options.Policy == FullPolicy.Reject)
            {
                if (into is not null)
                {
                    into.Count++; // counted in the store's slot, not written
                }

                return;
            }

            if (writes != (seq != 0))
            {
                Fail("coalescing", writes ? $"raise {token} of {codeName} wrote nothing, a record was due" : $"raise {token} of {codeName} wrote record {seq}, it should have merged into alert {into!.Id}");
                return;
            }

            if (seq != 0 && seq <= Model.MaxSeqSeen)
            {
                Fail("sequence reused", $"raise {token} got sequence number {seq}, already used (seen up to {Model.MaxSeqSeen})");
            }

            Model.MaxSeqSeen = Math.Max(Model.MaxSeqSeen, seq);
            if (into is null)
            {
                Model.NewAlert(token, seq, code, uptime);
            }
            else
            {
                Model.Repeat(into, token, seq, uptime, Queue.LastAppendDropped);
            }
        }

        private Sent Parse(OutgoingAlert outgoing)
        {
            int length = outgoing.WriteTo(_json, 0);
            var reader = new Utf8JsonReader(_json.AsSpan(0, length));
            uint idSeq = 0, count = 0, token = 0, dropped = 0, first = 0, last = 0;
            bool marker = false;
            int property = 0;
            while (reader.Read())
            {
                if (reader.TokenType == JsonTokenType.PropertyName)
                {
                    property = reader.ValueTextEquals("id"u8) ? 1 : reader.ValueTextEquals("code"u8) ? 2 : reader.ValueTextEquals("text"u8) ? 3
                        : reader.ValueTextEquals("count"u8) ? 4 : reader.ValueTextEquals("n"u8) ? 5 : reader.ValueTextEquals("dropped"u8) ? 6 : 0;
                    continue;
                }

                switch (property)
                {
                    case 1 when reader.TokenType == JsonTokenType.String:
                        ReadOnlySpan<byte> id = reader.ValueSpan;
                        System.Buffers.Text.Utf8Parser.TryParse(id[(id.IndexOf((byte)'-') + 1)..], out idSeq, out _);
                        break;
                    case 2 when reader.TokenType == JsonTokenType.String:
                        marker = reader.ValueTextEquals(MarkerCode);
                        break;
                    case 3 when reader.TokenType == JsonTokenType.String && marker:
                        var m = MarkerRange().Match(reader.GetString()!);
                        if (m.Success)
                        {
                            first = uint.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
                            last = uint.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture);
                        }

                        break;
                    case 4 when reader.TokenType == JsonTokenType.Number:
                        count = reader.GetUInt32();
                        break;
                    case 5 when reader.TokenType == JsonTokenType.Number:
                        token = reader.GetUInt32();
                        break;
                    case 6 when reader.TokenType == JsonTokenType.Number:
                        dropped = reader.GetUInt32();
                        break;
                }

                property = 0;
            }

            return new Sent(idSeq, outgoing.Seq, token, count, marker, dropped, first, last);
        }

        /// <summary>Checks one alert the store handed out against the model, and records it in the pass.</summary>
        private void Deliver(Sent s, bool inBoot)
        {
            Options.Log?.WriteLine($"{Where}: handed out entry {s.Seq} alert {s.IdSeq} raise {s.Token} count {s.Count}{(s.IsMarker ? $" marker {s.Dropped} {s.First}..{s.Last}" : string.Empty)}");
            if (Model.Pass.Count == 0)
            {
                _passHigh = 0;
            }

            if (s.Seq <= _passHigh && !IsFallback(s))
            {
                Fail("order", $"entry {s.Seq} handed out after {_passHigh}");
            }

            _passHigh = Math.Max(_passHigh, s.Seq);

            Model.MaxSeqSeen = Math.Max(Model.MaxSeqSeen, s.Seq);
            if (s.IsMarker)
            {
                Model.Pass.Add(new Delivery(0, 0, s.Seq, Queue.NextSeq, 0, true, s.First, s.Last, s.Dropped));
                DroppedReported += s.Dropped;
                return;
            }

            if (!Model.Records.TryGetValue(s.Token, out ModelRecord? rec))
            {
                Fail("never raised", $"alert {s.IdSeq} (raise {s.Token}) was never raised");
                return;
            }

            ModelAlert a = Identify(rec, s.IdSeq);
            if (rec.AlertId != s.IdSeq)
            {
                Fail("wrong record", $"the record of raise {s.Token} belongs to alert {rec.AlertId}, handed out as alert {s.IdSeq}");
                return;
            }

            bool holdsSlot = inBoot && a.Boot == Model.Boot && Model.CurrentOfCode[a.Code] == a.Id;
            uint expected = holdsSlot && rec.Token == a.LatestToken ? a.Count : rec.Count;
            if (s.Count != expected)
            {
                Fail("count", $"alert {a.Id} handed out with count {s.Count}, expected {expected} (record of raise {s.Token}, latest raise {a.LatestToken}, {a.Count} raised)");
            }

            CheckAllowed(a, rec, s);
            if (holdsSlot)
            {
                a.HandedOut = true;
            }

            Model.Pass.Add(new Delivery(a.Id, rec.Token, s.Seq, Queue.NextSeq, rec.OriginalSeq, false, 0, 0, 0));
        }

        /// <summary>
        /// Whether <paramref name="s"/> is an older record of an alert whose newest record known is one a raise that never
        /// returned wrote: the store hands it out after the entries that follow it when that record reads torn (see
        /// <see cref="MayReadTorn"/>), also when the check's own read of the flash finds it torn.
        /// </summary>
        private bool IsFallback(Sent s) =>
            !s.IsMarker && Model.Records.TryGetValue(s.Token, out ModelRecord? rec) && rec.AlertId != 0 && Model.Alerts.TryGetValue(rec.AlertId, out ModelAlert? a)
            && a.NewestToken != s.Token && NewestMayReadTorn(a);

        /// <summary>
        /// Whether the newest record known of <paramref name="a"/> is one a raise that never returned wrote: read torn by the
        /// store's scan and whole by its reader, it goes out as well as the older record it would have replaced (same id).
        /// </summary>
        private bool NewestMayReadTorn(ModelAlert a) => a.NewestToken != 0 && !Model.Records[a.NewestToken].Promised;

        /// <summary>The alert a record belongs to; a record whose append never returned is identified when first seen.</summary>
        private ModelAlert Identify(ModelRecord rec, uint idSeq)
        {
            if (rec.AlertId == 0)
            {
                rec.AlertId = idSeq;
                rec.OriginalSeq = idSeq;
            }

            if (!Model.Alerts.TryGetValue(rec.AlertId, out ModelAlert? a))
            {
                a = new ModelAlert { Id = rec.AlertId, Code = rec.Code, Severity = rec.Severity, Boot = uint.MaxValue, Count = rec.Count };
                Model.Alerts[rec.AlertId] = a;
            }

            return a;
        }

        /// <summary>An alert handed out again, or an older record of it: only as docs/flash-queue.md allows.</summary>
        private void CheckAllowed(ModelAlert a, ModelRecord rec, Sent s)
        {
            if (rec.Dropped)
            {
                Fail("dropped came back", $"alert {a.Id}: the record of raise {rec.Token} was counted as dropped and came back");
            }

            if (Store.ForgottenChains > 0)
            {
                a.ChainForgotten = true;
            }

            if (a.ChainForgotten || a.MaybeOwned)
            {
                return; // chains beyond the store's table, or an acknowledgement cut in flight: duplicates allowed
            }

            if (a.Owned)
            {
                bool movedSince = s.Seq >= a.OwnedNextSeq;
                bool older = rec.OriginalSeq != 0 && rec.OriginalSeq < a.OwnedRecordSeq;
                if (!movedSince && !older)
                {
                    Fail("acknowledged came back", $"alert {a.Id}, acknowledged, came back as entry {s.Seq} (record of raise {rec.Token}, count {s.Count})");
                }

                return;
            }

            foreach (Delivery d in Model.Pass)
            {
                if (!d.IsMarker && d.AlertId == a.Id && s.Seq < d.NextSeqThen && !NewestMayReadTorn(a))
                {
                    Fail("duplicate", $"alert {a.Id} handed out twice in one pass (entries {d.Seq} and {s.Seq}) without having been moved in between");
                }
            }

            if (rec.Promised && a.LatestToken != 0 && rec.Token != a.LatestToken && Model.Records.TryGetValue(a.LatestToken, out var latest)
                && rec.OriginalSeq < latest.OriginalSeq && !latest.Dropped && OnFlash(latest.Token))
            {
                Fail("count", $"alert {a.Id} handed out with the count {s.Count} of an older record (raise {rec.Token}) while its newest (raise {latest.Token}, count {latest.Count}) is queued");
            }
        }

        /// <summary>Whether the record of raise <paramref name="token"/> is on flash now (reads a copy of the device).</summary>
        private bool OnFlash(uint token)
        {
            using var copy = Flash.Fork(1);
            var q = new FlashQueue(copy, Options.Policy);
            copy.BeforeMutation = null;
            q.Mount(0);
            return Raw(q, out _).Exists(r => r.Token == token);
        }

        /// <summary>Everything the queue hands out after a mount, decoded.</summary>
        private List<RawItem> Raw(FlashQueue q, out List<(uint Count, uint First, uint Last)> markers)
        {
            var items = new List<RawItem>();
            markers = [];
            var entry = new QueueEntry();
            var buf = new byte[q.MaxPayload];
            var view = new AlertRecordView();
            while (q.TryRead(entry, buf, 0))
            {
                if (entry.Type == EntryType.Dropped)
                {
                    markers.Add((entry.DroppedCount, entry.DroppedFirstSeq, entry.DroppedLastSeq));
                    continue;
                }

                int start = entry.Kind == AlertStore.KindUpdate ? 4 : 0;
                uint alertId = entry.Kind == AlertStore.KindUpdate ? BitConverter.ToUInt32(buf, 0) : entry.OriginalSeq;
                if (view.Attach(buf, start, entry.Length - start) != AlertError.None || view.ValueCount != 1)
                {
                    Fail("corrupt", $"entry {entry.Seq} (original {entry.OriginalSeq}) holds a corrupt record");
                    continue;
                }

                items.Add(new RawItem(entry.Seq, entry.OriginalSeq, alertId, (uint)view.GetValueMantissa(0), view.Count, entry.Priority));
            }

            return items;
        }

        /// <summary>
        /// Right after a mount: compares what the queue holds and what the store hands out with the model.
        /// Leaves the reader where a mount leaves it.
        /// </summary>
        private void FullCheck()
        {
            var raw = Raw(Queue, out var markers);
            if (Options.Log is TextWriter log)
            {
                log.WriteLine($"{Where}: mounted, next {Queue.NextSeq} acked {Queue.AckedThrough}, head {Queue.LiveSectors} live");
                foreach (RawItem r in raw)
                {
                    log.WriteLine($"   entry {r.Seq} original {r.OriginalSeq} alert {r.AlertId} raise {r.Token} count {r.Count} priority {r.Priority}");
                }

                foreach (var m in markers)
                {
                    log.WriteLine($"   marker {m.Count} dropped, {m.First}..{m.Last}");
                }
            }

            Queue.Rewind();
            var sent = new List<Sent>();
            while (Store.TryNext(_outgoing))
            {
                sent.Add(Parse(_outgoing));
            }

            Store.Rewind();

            // What is on flash: known records, each once, with the number and count it was written with.
            var present = new Dictionary<uint, RawItem>();
            var newestOf = new Dictionary<uint, RawItem>();
            foreach (RawItem r in raw)
            {
                if (!Model.Records.TryGetValue(r.Token, out ModelRecord? rec))
                {
                    Fail("never raised", $"entry {r.Seq} holds raise {r.Token}, which was never raised");
                    continue;
                }

                // The number of a record a raise that never returned wrote is used once the uplink has it (Deliver);
                // seen here only, it may fade and be given again, which no one can tell.
                if (rec.Promised || r.Seq != r.OriginalSeq)
                {
                    Model.MaxSeqSeen = Math.Max(Model.MaxSeqSeen, r.Seq);
                }

                if (!present.TryAdd(r.Token, r))
                {
                    Fail("duplicate", $"the record of raise {r.Token} is on flash twice (entries {present[r.Token].Seq} and {r.Seq})");
                }

                if (!rec.Promised && rec.OriginalSeq == 0)
                {
                    rec.OriginalSeq = r.OriginalSeq; // its append was cut: now its number is known
                }

                if (rec.Promised && rec.OriginalSeq != r.OriginalSeq)
                {
                    Fail("wrong record", $"the record of raise {r.Token} was appended as {rec.OriginalSeq}, is on flash as original {r.OriginalSeq}");
                }

                ModelAlert a = Identify(rec, r.AlertId);
                if (!rec.Promised && (a.NewestToken == 0 || Model.Records[a.NewestToken].OriginalSeq < r.OriginalSeq))
                {
                    a.NewestToken = rec.Token;
                }

                if (rec.AlertId != r.AlertId || rec.Count != r.Count)
                {
                    Fail("wrong record", $"the record of raise {r.Token} reads alert {r.AlertId} count {r.Count}, was written as alert {rec.AlertId} count {rec.Count}");
                }

                if (rec.Dropped && rec.Promised)
                {
                    Fail("dropped came back", $"the record of raise {r.Token} was counted as dropped and came back (entry {r.Seq})");
                }

                if (!newestOf.TryGetValue(a.Id, out RawItem n) || r.OriginalSeq > n.OriginalSeq)
                {
                    newestOf[a.Id] = r;
                }
            }

            if (Options.Policy == FullPolicy.Reject && markers.Count > 0)
            {
                Fail("dropped with Reject", $"{markers.Count} drop markers with the Reject policy");
            }

            // Every alert owed to the gateway: its newest record is on flash (or a newer one whose append was cut),
            // or counted by a marker.
            var lost = new List<ModelRecord>();
            foreach (ModelAlert a in Model.Alerts.Values)
            {
                if (a.Owned || a.MaybeOwned || a.LatestToken == 0)
                {
                    continue;
                }

                // The newest record known (a cut append's, once a mount has seen it) must be here or counted; if that
                // one may have been weak and faded, the newest promised one then must be. (A marker whose range spans
                // the faded record's number does not show it was dropped while the promised one is here: merged
                // markers span the numbers between the records they count.)
                ModelRecord latest = Model.Records[a.NewestToken];
                if (!present.ContainsKey(latest.Token) && !latest.Promised
                    && (present.ContainsKey(a.LatestToken) || !Covered(latest.OriginalSeq, markers)))
                {
                    latest = Model.Records[a.LatestToken];
                }

                if (present.ContainsKey(latest.Token) || (newestOf.TryGetValue(a.Id, out RawItem newer) && newer.OriginalSeq > latest.OriginalSeq))
                {
                    continue;
                }

                bool counted = Covered(latest.OriginalSeq, markers);
                if (!counted && !Model.ReportedDropped(latest.OriginalSeq))
                {
                    Fail("lost", $"alert {a.Id} ({Workload.Codes[a.Code].Code}, {a.Severity}, count {latest.Count}, newest record {latest.OriginalSeq}) is lost: neither on flash nor counted by a drop marker");
                    continue;
                }

                if (!latest.Dropped)
                {
                    latest.Dropped = true;
                    Model.DroppedFound++;
                    lost.Add(latest);
                }
            }

            // Markers count every record dropped (older records of an alert too): what is on flash and what the
            // gateway acknowledged must cover every alert found dropped so far.
            long markerCount = markers.Sum(m => (long)m.Count);
            if (markerCount + Model.ReportedCount < Model.DroppedFound)
            {
                Fail("marker count", $"{Model.DroppedFound} alerts found dropped, the drop markers count {markerCount} on flash and {Model.ReportedCount} acknowledged");
            }

            if (Options.Policy == FullPolicy.DropLowestPriority)
            {
                foreach (ModelRecord d in lost)
                {
                    foreach (RawItem r in raw)
                    {
                        if (r.Priority < (byte)d.Severity && r.OriginalSeq < d.OriginalSeq)
                        {
                            Fail("priority", $"a {d.Severity} record (original {d.OriginalSeq}) was dropped while an older {(Severity)r.Priority} one (original {r.OriginalSeq}) stays queued");
                            break;
                        }
                    }
                }
            }

            // The store hands out each alert once, from its newest record on flash.
            var handed = new HashSet<uint>();
            uint lastSeq = 0;
            foreach (Sent s in sent)
            {
                ModelRecord? rec = null;
                ModelAlert? alert = !s.IsMarker && Model.Records.TryGetValue(s.Token, out rec) ? Identify(rec, s.IdSeq) : null;
                bool fallback = IsFallback(s);
                if (s.Seq <= lastSeq && !fallback)
                {
                    Fail("order", $"the store handed out entry {s.Seq} after {lastSeq}");
                }

                lastSeq = Math.Max(lastSeq, s.Seq);
                if (alert == null || rec == null)
                {
                    continue;
                }

                ModelAlert a = alert;
                if (s.Count != rec.Count || rec.AlertId != s.IdSeq)
                {
                    Fail("wrong record", $"alert {s.IdSeq} handed out with count {s.Count} from raise {s.Token}, which wrote alert {rec.AlertId} count {rec.Count}");
                }

                bool forgotten = Store.ForgottenChains > 0 || a.ChainForgotten;
                if (!handed.Add(a.Id) && !forgotten && !NewestMayReadTorn(a))
                {
                    Fail("duplicate", $"alert {a.Id} handed out twice after a mount");
                }

                // (A newer record than the check's own read found, one a raise that never returned wrote, read whole by the
                // store: the same noisy cells.)
                if (!forgotten && !fallback && newestOf.TryGetValue(a.Id, out RawItem newest) && newest.Token != s.Token
                    && (rec.Promised || rec.OriginalSeq < newest.OriginalSeq))
                {
                    Fail("count", $"alert {a.Id} handed out with count {s.Count} (raise {s.Token}) though its newer record (raise {newest.Token}, count {newest.Count}) is on flash");
                }

                if (a.Owned && !a.MaybeOwned && !forgotten && s.Seq < a.OwnedNextSeq && rec.OriginalSeq >= a.OwnedRecordSeq)
                {
                    Fail("acknowledged came back", $"alert {a.Id}, acknowledged, came back after a mount as entry {s.Seq}");
                }
            }

            foreach (var (id, newest) in newestOf)
            {
                ModelAlert a = Model.Alerts[id];
                if (!a.Owned && !a.MaybeOwned && !handed.Contains(id) && raw.Exists(r => r.AlertId == id && !MayReadTorn(r)))
                {
                    Fail("not handed out", $"alert {id} (newest record raise {newest.Token}, entry {newest.Seq}) is on flash but the store does not hand it out");
                }
            }

            var sentMarkers = sent.Where(s => s.IsMarker).Select(s => (Count: s.Dropped, s.First, s.Last)).ToList();
            if (!MarkersAgree(sentMarkers, markers))
            {
                Fail("marker count", $"the store reports {sentMarkers.Sum(m => (long)m.Count)} dropped in {sentMarkers.Count} alerts, the queue's markers count {markerCount} in {markers.Count}");
            }
        }

        /// <summary>
        /// Whether the markers the store handed out are those the check's own read found, in order. One per cut a life
        /// has (two at most: the first and the second cut) may differ: a marker written on arrival for a raise that never
        /// returned counts only that raise's entry, and a cut that struck it as it completed can leave weak cells that
        /// read whole in one read and torn in the next, as that raise's record could (<see cref="MayReadTorn"/>). Read
        /// torn, it is missing, or missing from the end of the run it closes (the run then reports one fewer, up to its
        /// previous marker).
        /// </summary>
        private bool MarkersAgree(List<(uint Count, uint First, uint Last)> a, List<(uint Count, uint First, uint Last)> b)
        {
            if (a.SequenceEqual(b))
            {
                return true; // the rule at almost every check: the model's numbers are not needed
            }

            var promised = new HashSet<uint>(Model.Records.Values.Where(r => r.Promised).Select(r => r.OriginalSeq));
            return Agree(0, 0, tornLeft: 2);

            bool Agree(int i, int j, int tornLeft)
            {
                while (i < a.Count && j < b.Count && a[i] == b[j])
                {
                    i++;
                    j++;
                }

                if (i == a.Count && j == b.Count)
                {
                    return true;
                }

                return tornLeft > 0
                    && ((i < a.Count && UnpromisedAlone(a[i]) && Agree(i + 1, j, tornLeft - 1))
                        || (j < b.Count && UnpromisedAlone(b[j]) && Agree(i, j + 1, tornLeft - 1))
                        || (i < a.Count && j < b.Count && a[i].First == b[j].First && (ShorterBy1(a[i], b[j]) || ShorterBy1(b[j], a[i])) && Agree(i + 1, j + 1, tornLeft - 1)));
            }

            bool UnpromisedAlone((uint Count, uint First, uint Last) m) => m.Count == 1 && m.First == m.Last && !promised.Contains(m.First);
            bool ShorterBy1((uint Count, uint First, uint Last) shorter, (uint Count, uint First, uint Last) run) =>
                run.Count == shorter.Count + 1 && shorter.Last < run.Last && !promised.Contains(run.Last);
        }

        /// <summary>
        /// The record of a raise that never returned may hold noisy cells: one read can pass its CRC (the check's, or the
        /// store's scan) and the next fail (the store's reader). The store then hands out the alert's older record, after
        /// the entries that followed it (it learns the update is missing only at the end of the queue), or nothing of an
        /// alert that record alone holds, which that raise never promised.
        /// </summary>
        private bool MayReadTorn(RawItem r) => Model.Records.TryGetValue(r.Token, out ModelRecord? rec) && !rec.Promised;

        /// <summary>Records the broken promise and ends this life: after the first one the model no longer matches the device.</summary>
        private static bool Covered(uint seq, List<(uint Count, uint First, uint Last)> markers) =>
            markers.Exists(m => seq >= m.First && seq <= m.Last);

        private void Fail(string kind, string what)
        {
            owner.Violation(kind, Where, what);
            throw new LifeFailedException();
        }
    }

    private sealed class Clock : IClock
    {
        public long UptimeMs { get; set; } = 1_000;
    }
}
