//! trace/timeline.svg: one lane per tag (device, queue, tag), time to the right. A request is
//! a bar from its dispatch to its completion (colour by operation); the server's commands are
//! ticks on the lane (commit: dark, fetch: grey, refused: orange); a tag still holding a
//! request when the trace ended is red to the end, its lane label red and marked STUCK, its
//! summary written under the plot; a broken protocol rule is a red dot on the event that broke
//! it, its lane marked RULE and its message under the plot. Every mark has a tooltip. Plain
//! SVG, no dependencies.

use std::collections::BTreeMap;

use ublk::ktrace::check::{Stuck, Violation};
use ublk::ktrace::{Event, IoCmd, Kind, Op, EIOCBQUEUED};

use crate::text::xml;

/// Lanes drawn: stuck tags first, then the most recently busy.
const MAX_LANES: usize = 48;
/// Requests drawn: the newest (the window starts at the oldest of them).
const MAX_BARS: usize = 4000;
const LANE_H: f64 = 14.0;
const LEFT: f64 = 130.0;
const PLOT_W: f64 = 900.0;
const TOP: f64 = 56.0;

type Lane = (u32, u16, u16);

/// `end_us`: when the ring was read (guest uptime): a stuck request's bar reaches it.
pub fn render(events: &[Event], stuck: &[Stuck], violations: &[Violation], end_us: u64) -> String {
    let broken: Vec<Lane> = violations.iter().map(|v| lane_of(&v.event)).collect();
    let lanes = lanes(events, stuck, &broken);
    let (t0, t1) = window(events);
    let t1 = t1.max(end_us);
    let span = (t1.saturating_sub(t0)).max(1) as f64;
    let x = |t: u64| LEFT + PLOT_W * (t.saturating_sub(t0) as f64 / span);
    let plot_bottom = TOP + LANE_H * lanes.len().max(1) as f64;
    let notes = notes(stuck, violations);
    let height = plot_bottom + 60.0 + 14.0 * notes.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"10\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        LEFT + PLOT_W + 20.0
    );
    s += &format!(
        "<text x=\"8\" y=\"16\" font-size=\"13\">ublk tags as the kernel saw them, {:.3} s to {:.3} s</text>\n\
         <text x=\"8\" y=\"32\">bar: dispatch to completion (blue READ, green WRITE, grey other); tick: server command \
         (black COMMIT, grey FETCH, orange refused); red: still held when the trace ended; red dot: a broken rule</text>\n",
        t0 as f64 / 1e6,
        t1 as f64 / 1e6
    );
    axis(&mut s, t0, t1, &x, plot_bottom + 4.0);
    let row: BTreeMap<Lane, usize> = lanes.iter().enumerate().map(|(i, l)| (*l, i)).collect();
    let stuck_at: Vec<Lane> = stuck.iter().map(|t| (t.dev, t.q, t.tag)).collect();
    for (i, lane) in lanes.iter().enumerate() {
        let flag = match (stuck_at.contains(lane), broken.contains(lane)) {
            (true, true) => " STUCK RULE",
            (true, false) => " STUCK",
            (false, true) => " RULE",
            (false, false) => "",
        };
        let colour = if flag.is_empty() { "#333" } else { "#c00" };
        s += &format!(
            "<text x=\"8\" y=\"{:.1}\" fill=\"{colour}\">dev{} q{} tag {}{flag}</text>\n",
            TOP + LANE_H * i as f64 + 10.0,
            lane.0,
            lane.1,
            lane.2,
        );
    }
    for (i, n) in notes.iter().enumerate() {
        let y = plot_bottom + 44.0 + 14.0 * i as f64;
        s += &format!(
            "<text x=\"8\" y=\"{y:.1}\" fill=\"#c00\">{}</text>\n",
            xml(n)
        );
    }
    marks(&mut s, events, &row, t0, t1, &x);
    for v in violations {
        if let (Some(i), true) = (row.get(&lane_of(&v.event)), v.event.t_us >= t0) {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#e00\"><title>{}</title></circle>\n",
                x(v.event.t_us),
                TOP + LANE_H * *i as f64 + LANE_H / 2.0,
                xml(&v.message)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn lane_of(e: &Event) -> Lane {
    (e.dev, e.q, e.tag)
}

/// Lines under the plot: stuck tags, then broken rules.
const MAX_NOTES: usize = 16;

/// The lines under the plot: stuck tags, then broken rules, at most MAX_NOTES and a count of
/// the rest (summary.txt has them all).
fn notes(stuck: &[Stuck], violations: &[Violation]) -> Vec<String> {
    let stuck = stuck.iter().map(|t| format!("STUCK {}", t.summary));
    let rules = violations.iter().map(|v| format!("RULE {}", v.message));
    let mut all: Vec<String> = stuck.chain(rules).collect();
    if all.len() > MAX_NOTES {
        let more = all.len() - MAX_NOTES;
        all.truncate(MAX_NOTES);
        all.push(format!("... and {more} more (trace/summary.txt)"));
    }
    all
}

/// Stuck tags first, then tags that broke a rule, then tags by their last activity, newest
/// first; at most MAX_LANES, drawn in (dev, queue, tag) order.
fn lanes(events: &[Event], stuck: &[Stuck], broken: &[Lane]) -> Vec<Lane> {
    let mut last: BTreeMap<Lane, u64> = BTreeMap::new();
    for e in events {
        if !matches!(e.kind, Kind::Control { .. } | Kind::Gap) {
            last.insert(lane_of(e), e.t_us);
        }
    }
    let mut chosen: Vec<Lane> = Vec::new();
    for l in stuck
        .iter()
        .map(|t| (t.dev, t.q, t.tag))
        .chain(broken.iter().copied())
    {
        if !chosen.contains(&l) && chosen.len() < MAX_LANES {
            chosen.push(l);
        }
    }
    let mut rest: Vec<(Lane, u64)> = last
        .into_iter()
        .filter(|(l, _)| !chosen.contains(l))
        .collect();
    rest.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
    chosen.extend(
        rest.into_iter()
            .map(|(l, _)| l)
            .take(MAX_LANES - chosen.len()),
    );
    chosen.sort();
    chosen
}

/// From the oldest of the newest MAX_BARS dispatches to the last event.
fn window(events: &[Event]) -> (u64, u64) {
    let t1 = events.last().map(|e| e.t_us).unwrap_or(0);
    let dispatches: Vec<u64> = events
        .iter()
        .filter(|e| matches!(e.kind, Kind::Dispatch { .. }))
        .map(|e| e.t_us)
        .collect();
    let first = events.first().map(|e| e.t_us).unwrap_or(0);
    let t0 = match dispatches.len() {
        n if n > MAX_BARS => dispatches[n - MAX_BARS],
        _ => first,
    };
    (t0.min(t1), t1)
}

fn axis(s: &mut String, t0: u64, t1: u64, x: &dyn Fn(u64) -> f64, y: f64) {
    let span_s = (t1 - t0) as f64 / 1e6;
    let step_s = [0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0]
        .into_iter()
        .find(|st| span_s / st <= 12.0)
        .unwrap_or(600.0);
    let step_us = (step_s * 1e6) as u64;
    let mut t = t0.div_ceil(step_us).saturating_mul(step_us);
    for _ in 0..20 {
        if t > t1 {
            break;
        }
        *s += &format!(
            "<line x1=\"{0:.1}\" y1=\"{TOP}\" x2=\"{0:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{0:.1}\" y=\"{1:.1}\" text-anchor=\"middle\">{2:.3} s</text>\n",
            x(t),
            y + 14.0,
            t as f64 / 1e6
        );
        t = t.saturating_add(step_us);
    }
}

/// Bars for requests, ticks for commands, in the window.
fn marks(
    s: &mut String,
    events: &[Event],
    row: &BTreeMap<Lane, usize>,
    t0: u64,
    t1: u64,
    x: &dyn Fn(u64) -> f64,
) {
    let mut open: BTreeMap<Lane, Event> = BTreeMap::new();
    let y = |lane: &Lane| row.get(lane).map(|i| TOP + LANE_H * *i as f64);
    for e in events {
        let lane = (e.dev, e.q, e.tag);
        let Some(ly) = y(&lane) else { continue };
        match e.kind {
            Kind::Dispatch { .. } => {
                open.insert(lane, *e);
            }
            Kind::Complete { .. } | Kind::Requeue => {
                if let Some(d) = open.remove(&lane) {
                    if e.t_us >= t0 {
                        bar(
                            s,
                            &d,
                            e.t_us,
                            ly,
                            x,
                            false,
                            &format!("; {} at {}", e.describe(), e.at()),
                        );
                    }
                }
            }
            Kind::Command { cmd, ret, .. } if e.t_us >= t0 => {
                let refused = matches!(ret, Some(r) if r < 0 && r != EIOCBQUEUED);
                let colour = match (refused, cmd) {
                    (true, _) => "#f80",
                    (false, IoCmd::CommitAndFetch) => "#000",
                    _ => "#999",
                };
                *s += &format!(
                    "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"{colour}\" stroke-width=\"1.5\"><title>{3}</title></line>\n",
                    x(e.t_us),
                    ly + 1.0,
                    ly + LANE_H - 1.0,
                    xml(&format!("{}: {} at {}", e.place(), e.describe(), e.at()))
                );
            }
            _ => {}
        }
    }
    for d in open.values() {
        if let Some(ly) = y(&(d.dev, d.q, d.tag)) {
            bar(
                s,
                d,
                t1,
                ly,
                x,
                true,
                "; not completed when the trace ended",
            );
        }
    }
}

fn bar(
    s: &mut String,
    d: &Event,
    end: u64,
    ly: f64,
    x: &dyn Fn(u64) -> f64,
    stuck: bool,
    tail: &str,
) {
    let colour = match (stuck, d.kind) {
        (true, _) => "#e33",
        (_, Kind::Dispatch { op: Op::Read, .. }) => "#4e79a7",
        (_, Kind::Dispatch { op: Op::Write, .. }) => "#59a14f",
        _ => "#aaa",
    };
    let (x0, x1) = (x(d.t_us), x(end));
    *s += &format!(
        "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\" fill-opacity=\"0.8\"><title>{}</title></rect>\n",
        ly + 3.0,
        (x1 - x0).max(1.0),
        LANE_H - 6.0,
        xml(&format!("{}: {} at {}{tail}", d.place(), d.describe(), d.at()))
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ublk::ktrace::check::Checker;
    use ublk::ktrace::Header;

    fn ev(t_us: u64, tag: u16, kind: Kind) -> Event {
        Event {
            t_us,
            pid: 1,
            dev: 0,
            q: 1,
            tag,
            kind,
        }
    }

    #[test]
    fn a_stuck_tag_is_red_and_named() {
        let read = Kind::Dispatch {
            op: Op::Read,
            flags: 0,
            sector: 8,
            sectors: 8,
        };
        let events = [
            ev(1_000_000, 5, read),
            ev(1_100_000, 4, read),
            ev(
                1_150_000,
                4,
                Kind::Complete {
                    error: 0,
                    bytes: 4096,
                },
            ),
            ev(
                2_000_000,
                3,
                Kind::Command {
                    cmd: IoCmd::Fetch,
                    result: 0,
                    addr: 0,
                    ret: Some(-22),
                },
            ),
        ];
        let c = Checker::run(&Header::default(), &events);
        let svg = render(&events, &c.stuck(), &c.violations, 9_000_000);
        assert!(svg.contains(">dev0 q1 tag 5 STUCK</text>"), "{svg}");
        assert!(
            svg.contains(
                "dev0 q1 tag 5: dispatched READ 8+8 at 1.000 s; no command from the server since"
            ),
            "{svg}"
        );
        assert!(
            svg.contains("fill=\"#e33\""),
            "the stuck request's bar is red"
        );
        assert!(
            svg.contains(">9.000 s</text>"),
            "the window ends when the ring was read: {svg}"
        );
        assert!(
            svg.contains("fill=\"#4e79a7\""),
            "the completed read is blue"
        );
        assert!(
            svg.contains("stroke=\"#f80\""),
            "the refused fetch is orange"
        );
        assert!(!svg.contains(">dev0 q1 tag 4 STUCK"));
        // The refused fetch broke a rule: a red dot on it, its lane and message marked.
        assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
        assert!(svg.contains(">dev0 q1 tag 3 RULE</text>"), "{svg}");
        assert!(svg.contains("<circle cx="), "{svg}");
        assert!(
            svg.contains(
                ">RULE dev0 q1 tag 3: server FETCH, refused -22 at 2.000 s: rule command-refused"
            ),
            "{svg}"
        );
    }

    #[test]
    fn lanes_and_bars_are_bounded() {
        let mut events = Vec::new();
        for i in 0..20_000u64 {
            let tag = (i % 200) as u16;
            events.push(ev(
                i * 10,
                tag,
                Kind::Dispatch {
                    op: Op::Write,
                    flags: 0,
                    sector: i,
                    sectors: 8,
                },
            ));
            events.push(ev(
                i * 10 + 5,
                tag,
                Kind::Complete {
                    error: 0,
                    bytes: 4096,
                },
            ));
        }
        let svg = render(&events, &[], &[], 0);
        assert_eq!(svg.matches("STUCK").count(), 0);
        assert!(
            svg.matches("<rect").count() <= MAX_BARS + 2,
            "{}",
            svg.matches("<rect").count()
        );
        assert_eq!(svg.matches("fill=\"#333\">dev0 q1 tag ").count(), MAX_LANES);
    }
}
