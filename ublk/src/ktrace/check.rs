//! The protocol rules a kernel-side trace must keep, checked offline, per tag:
//!
//! ```text
//!   idle ──FETCH──► armed ──Dispatch──► held by server ──COMMIT(result)──► committed
//!    ▲                ▲                                                       │
//!    │                └──────────────(COMMIT re-arms the fetch)───────────────┤
//!    └── Cancel / STOP                          Complete (to the block layer) ┘
//! ```
//!
//! A rule broken is a `Violation` naming the tag, the event and the rule. A trace whose ring
//! buffer overwrote its oldest events (`Header::lost > 0`) starts every tag `unknown`: rules
//! that need a tag's past apply only once its first fetch or dispatch was seen.

use std::collections::{BTreeMap, VecDeque};

use super::{CtrlCmd, Event, Header, IoCmd, Kind, Op, EIOCBQUEUED};

/// Violations kept (more are counted).
pub const MAX_VIOLATIONS: usize = 32;
/// Events remembered per tag (for freeze-frames and violation messages).
pub const LAST_EVENTS: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    CommitWithoutRequest,
    ResultExceedsRequest,
    FetchWhileBusy,
    CompletedTwice,
    DispatchWhileBusy,
    CommandRefused,
    StopWithOutstanding,
    RecoveryOrder,
}

impl Rule {
    pub const ALL: &'static [Rule] = &[
        Rule::CommitWithoutRequest,
        Rule::ResultExceedsRequest,
        Rule::FetchWhileBusy,
        Rule::CompletedTwice,
        Rule::DispatchWhileBusy,
        Rule::CommandRefused,
        Rule::StopWithOutstanding,
        Rule::RecoveryOrder,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Rule::CommitWithoutRequest => "commit-without-request",
            Rule::ResultExceedsRequest => "result-exceeds-request",
            Rule::FetchWhileBusy => "fetch-while-busy",
            Rule::CompletedTwice => "completed-twice",
            Rule::DispatchWhileBusy => "dispatch-while-busy",
            Rule::CommandRefused => "command-refused",
            Rule::StopWithOutstanding => "stop-with-outstanding",
            Rule::RecoveryOrder => "recovery-order",
        }
    }

    /// The rule in one sentence.
    pub fn meaning(&self) -> &'static str {
        match self {
            Rule::CommitWithoutRequest => "a commit is for a tag that holds a request",
            Rule::ResultExceedsRequest => "a commit's result is at most its request's length",
            Rule::FetchWhileBusy => {
                "a fetch is for a tag with no command pending and no request being served"
            }
            Rule::CompletedTwice => "a request's data is completed to the block layer once",
            Rule::DispatchWhileBusy => "a tag receives a request only once its last one completed",
            Rule::CommandRefused => "the driver accepts every command the server sends",
            Rule::StopWithOutstanding => "STOP_DEV/DEL_DEV return with no request outstanding",
            Rule::RecoveryOrder => {
                "END_USER_RECOVERY succeeds only after every tag was fetched again"
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    pub event: Event,
    /// "dev0 q1 tag 5: server COMMIT result 65536 at 1.300 s, for READ 8+8 dispatched at
    /// 1.204 s: rule result-exceeds-request (a commit's result is at most ...)".
    pub message: String,
}

/// A request the driver took and has not completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    dispatch: Event,
    op: Op,
    bytes: u64,
    committed: bool,
}

#[derive(Clone, Debug, Default)]
struct Tag {
    known: bool,
    /// A FETCH or COMMIT_AND_FETCH the driver accepted and holds.
    armed: bool,
    held: Option<Held>,
    ever_fetched: bool,
    /// Fetched again since the device's START_USER_RECOVERY.
    refetched: bool,
    last: VecDeque<Event>,
}

#[derive(Clone, Debug, Default)]
pub struct DevCounts {
    pub dispatched: u64,
    pub completed: u64,
    pub commands: u64,
    /// Of the commands, elements of BATCH_IO lists (PREP_IO, COMMIT_IO): a batched device.
    pub batched: u64,
}

/// A tag still holding a request when the trace ended, with its last events.
#[derive(Clone, Debug)]
pub struct Stuck {
    pub dev: u32,
    pub q: u16,
    pub tag: u16,
    pub last: Vec<Event>,
    /// "dev0 q1 tag 5: dispatched READ 8+8 at 1.204 s; no command from the server since".
    pub summary: String,
}

#[derive(Default)]
pub struct Checker {
    lossy: bool,
    tags: BTreeMap<(u32, u16, u16), Tag>,
    pub violations: Vec<Violation>,
    pub violations_total: u64,
    pub counts: BTreeMap<u32, DevCounts>,
}

impl Checker {
    pub fn new(header: &Header) -> Checker {
        Checker {
            lossy: header.lost > 0,
            ..Default::default()
        }
    }

    /// Checks a whole trace.
    pub fn run(header: &Header, events: &[Event]) -> Checker {
        let mut c = Checker::new(header);
        for e in events {
            c.step(e);
        }
        c
    }

    pub fn step(&mut self, e: &Event) {
        if let Kind::Control { cmd, ret, .. } = e.kind {
            return self.control(e, cmd, ret);
        }
        if e.kind == Kind::Gap {
            // Unknown events in between: every tag is judged again from its next fetch or
            // dispatch on, as after a lost ring.
            self.lossy = true;
            for t in self.tags.values_mut() {
                *t = Tag::default();
            }
            return;
        }
        let lossy = self.lossy;
        let counts = self.counts.entry(e.dev).or_default();
        match e.kind {
            Kind::Dispatch { .. } => counts.dispatched += 1,
            Kind::Complete { .. } => counts.completed += 1,
            Kind::Command { cmd, .. } => {
                counts.commands += 1;
                counts.batched += u64::from(matches!(cmd, IoCmd::PrepIo | IoCmd::CommitIo));
            }
            _ => {}
        }
        let tag = self.tags.entry((e.dev, e.q, e.tag)).or_insert_with(|| Tag {
            known: !lossy,
            ..Default::default()
        });
        tag.last.push_back(*e);
        if tag.last.len() > LAST_EVENTS {
            tag.last.pop_front();
        }
        let broken = tag_step(tag, e);
        if let Some((rule, detail)) = broken {
            self.violate(rule, e, detail);
        }
    }

    fn violate(&mut self, rule: Rule, e: &Event, detail: String) {
        self.violations_total += 1;
        if self.violations.len() >= MAX_VIOLATIONS {
            return;
        }
        let message = format!(
            "{}: {} at {}{detail}: rule {} ({})",
            e.place(),
            e.describe(),
            e.at(),
            rule.name(),
            rule.meaning()
        );
        self.violations.push(Violation {
            rule,
            event: *e,
            message,
        });
    }

    fn control(&mut self, e: &Event, cmd: CtrlCmd, ret: Option<i32>) {
        if ret != Some(0) {
            return; // refused or unanswered: the device's state did not change
        }
        let dev = e.dev;
        let of_dev = |k: &(u32, u16, u16)| k.0 == dev;
        match cmd {
            CtrlCmd::STOP_DEV | CtrlCmd::DEL_DEV | CtrlCmd::DEL_DEV_ASYNC => {
                let held: Vec<Event> = self
                    .tags
                    .iter()
                    .filter(|(k, t)| of_dev(k) && t.known)
                    .filter_map(|(_, t)| t.held.map(|h| h.dispatch))
                    .collect();
                if let Some(first) = held.first() {
                    let detail = format!(
                        ": {} request(s) outstanding, the first {}: {} at {}",
                        held.len(),
                        first.place(),
                        first.describe(),
                        first.at()
                    );
                    self.violate(Rule::StopWithOutstanding, e, detail);
                }
                if cmd != CtrlCmd::STOP_DEV {
                    self.tags.retain(|k, _| !of_dev(k));
                }
            }
            CtrlCmd::START_USER_RECOVERY => {
                for (_, t) in self.tags.iter_mut().filter(|(k, _)| of_dev(k)) {
                    t.armed = false;
                    t.refetched = false;
                }
            }
            CtrlCmd::END_USER_RECOVERY => {
                let missing: Vec<String> = self
                    .tags
                    .iter()
                    .filter(|(k, t)| of_dev(k) && t.ever_fetched && !t.refetched)
                    .map(|(k, _)| format!("q{} tag {}", k.1, k.2))
                    .collect();
                if !missing.is_empty() {
                    let detail = format!(
                        ": {} tag(s) not fetched again, e.g. {}",
                        missing.len(),
                        missing[0]
                    );
                    self.violate(Rule::RecoveryOrder, e, detail);
                }
            }
            _ => {}
        }
    }

    /// Tags holding a request at the end of the trace (a hang's suspects).
    pub fn stuck(&self) -> Vec<Stuck> {
        self.tags
            .iter()
            .filter_map(|(&(dev, q, tag), t)| {
                let held = t.held?;
                Some(Stuck {
                    dev,
                    q,
                    tag,
                    last: t.last.iter().copied().collect(),
                    summary: stuck_summary(&held, t),
                })
            })
            .collect()
    }

    /// The last events of one tag.
    pub fn last_events(&self, dev: u32, q: u16, tag: u16) -> Vec<Event> {
        self.tags
            .get(&(dev, q, tag))
            .map(|t| t.last.iter().copied().collect())
            .unwrap_or_default()
    }
}

fn stuck_summary(held: &Held, t: &Tag) -> String {
    let d = &held.dispatch;
    let after: Vec<&Event> = t.last.iter().filter(|e| e.t_us > d.t_us).collect();
    let since = match after.last() {
        None => "; no command from the server since".to_string(),
        Some(e) => format!("; then {} at {}", e.describe(), e.at()),
    };
    format!("{}: {} at {}{since}", d.place(), d.describe(), d.at())
}

/// One tag's rules for one event; the broken rule and what to add to the message.
fn tag_step(t: &mut Tag, e: &Event) -> Option<(Rule, String)> {
    let for_held = |t: &Tag| match t.held {
        Some(h) => format!(", for {} at {}", h.dispatch.describe(), h.dispatch.at()),
        None => String::new(),
    };
    match e.kind {
        Kind::Dispatch { op, sectors, .. } => {
            let busy = t.known && t.held.is_some();
            let detail = for_held(t);
            t.held = Some(Held {
                dispatch: *e,
                op,
                bytes: sectors as u64 * 512,
                committed: false,
            });
            t.known = true;
            // The request goes to the server through the tag's pending fetch.
            t.armed = false;
            busy.then(|| {
                (
                    Rule::DispatchWhileBusy,
                    detail.replace(", for", ", while the tag holds"),
                )
            })
        }
        Kind::Command {
            cmd, result, ret, ..
        } => command_step(t, cmd, result, ret),
        Kind::Cancel => {
            t.armed = false;
            None
        }
        Kind::Complete { error, bytes } => {
            // Completions of a tag holding nothing that are not second completions: a request
            // the driver refused in queue_rq (FAIL_IO with no server: BLK_STS_TARGET), ended
            // unstarted with that error; and the block layer's flush machinery, whose flush
            // request borrows a waiting request's tag and, once done, ends the waiting
            // request itself (0 bytes left: a pure flush, or data already completed).
            let twice = t.known && t.held.is_none() && error == 0 && bytes > 0;
            t.held = None;
            twice.then(|| {
                let prev = t
                    .last
                    .iter()
                    .rev()
                    .skip(1)
                    .find(|p| matches!(p.kind, Kind::Complete { .. }));
                let detail = match prev {
                    Some(p) => format!(", already {} at {}", p.describe(), p.at()),
                    None => ", with no request dispatched".into(),
                };
                (Rule::CompletedTwice, detail)
            })
        }
        Kind::Requeue => {
            t.held = None;
            None
        }
        Kind::Control { .. } | Kind::Gap => None,
    }
}

fn command_step(t: &mut Tag, cmd: IoCmd, result: i32, ret: Option<i32>) -> Option<(Rule, String)> {
    let refused = matches!(ret, Some(r) if r < 0 && r != EIOCBQUEUED);
    let held = t.held;
    let serving = held.is_some_and(|h| !h.committed);
    let broken = match cmd {
        c if c.fetches() && t.known && (t.armed || serving) => {
            let why = if t.armed {
                ", while its earlier fetch is pending".to_string()
            } else {
                let d = held.unwrap().dispatch;
                format!(", while serving {} from {}", d.describe(), d.at())
            };
            Some((Rule::FetchWhileBusy, why))
        }
        c if c.commits() && t.known && !serving => {
            let why = match held {
                Some(h) => format!(", already committed for {}", h.dispatch.describe()),
                None => ", holding no request".to_string(),
            };
            Some((Rule::CommitWithoutRequest, why))
        }
        c if c.commits() => match held {
            Some(h) if h.op.moves_data() && result as i64 > h.bytes as i64 => Some((
                Rule::ResultExceedsRequest,
                format!(
                    ", for a {}-byte {} dispatched at {}",
                    h.bytes,
                    h.dispatch.describe().trim_start_matches("dispatched "),
                    h.dispatch.at()
                ),
            )),
            _ => None,
        },
        _ => None,
    };
    let broken = broken.or_else(|| refused.then(|| (Rule::CommandRefused, String::new())));
    if refused {
        return broken;
    }
    match cmd {
        c if c.fetches() => {
            t.armed = true;
            t.known = true;
            t.ever_fetched = true;
            t.refetched = true;
        }
        c if c.commits() => {
            t.armed = true;
            if let Some(h) = &mut t.held {
                h.committed = true;
            }
        }
        _ => {}
    }
    broken
}
