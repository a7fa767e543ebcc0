//! perf.svg: one bar group per workload, one bar per target = its IOPS over brd's in the same
//! round (median), with a whisker from the lowest to the highest round. One chart per kernel,
//! stacked. Plain SVG a browser opens; no dependencies.

use super::report::{PerfReport, Session};

const BAR_W: f64 = 14.0;
const GROUP_GAP: f64 = 24.0;
const PLOT_H: f64 = 220.0;
const LEFT: f64 = 56.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 110.0;
/// One colour per target position (cycled).
const COLOURS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
];

pub fn svg(report: &PerfReport) -> String {
    let groups = report.workloads.len().max(1) as f64;
    let per_group = report.targets.len().max(1) as f64 * BAR_W + GROUP_GAP;
    let width = (LEFT + groups * per_group + 160.0).max(640.0);
    let panel_h = TOP + PLOT_H + BOTTOM;
    let height = panel_h * report.sessions.len().max(1) as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, session) in report.sessions.iter().enumerate() {
        panel(&mut s, report, session, i as f64 * panel_h, per_group);
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, report: &PerfReport, session: &Session, y0: f64, per_group: f64) {
    let max = session
        .cells
        .iter()
        .filter_map(|c| c.ratio.map(|r| r.max))
        .fold(1.0f64, f64::max)
        .min(20.0);
    let top = (max * 4.0).ceil() / 4.0;
    let y = |v: f64| y0 + TOP + PLOT_H * (1.0 - v.min(top) / top);
    s.push_str(&format!(
        "<text x=\"{LEFT}\" y=\"{:.1}\" font-size=\"13\">{}: IOPS relative to brd in the same round</text>\n\
         <text x=\"{LEFT}\" y=\"{:.1}\">bar: median, whisker: min to max of {} rounds; {}, {} vCPUs, clock {}</text>\n",
        y0 + 16.0,
        crate::text::xml(&format!("{} ({})", session.kernel, session.kernel_release)),
        y0 + 31.0,
        report.rounds,
        crate::text::xml(&report.accelerator),
        report.vcpus,
        crate::text::xml(&report.clock)
    ));
    let mut v = 0.0;
    while v <= top + 1e-9 {
        let (x2, yv, tx) = (
            LEFT + report.workloads.len() as f64 * per_group,
            y(v),
            LEFT - 4.0,
        );
        s.push_str(&format!(
            "<line x1=\"{LEFT}\" x2=\"{x2:.1}\" y1=\"{yv:.1}\" y2=\"{yv:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>\n",
            yv + 4.0
        ));
        v += if top > 4.0 { 1.0 } else { 0.25 };
    }
    for (wi, w) in report.workloads.iter().enumerate() {
        let gx = LEFT + wi as f64 * per_group + GROUP_GAP / 2.0;
        for (ti, t) in report.targets.iter().enumerate() {
            let Some(c) = session
                .cells
                .iter()
                .find(|c| &c.workload == w && &c.target == t)
            else {
                continue;
            };
            let Some(r) = c.ratio else { continue };
            let x = gx + ti as f64 * BAR_W;
            let colour = COLOURS[ti % COLOURS.len()];
            let (top, base, hi, lo) = (y(r.median), y(0.0), y(r.max), y(r.min));
            let (bw, mid) = (BAR_W - 2.0, x + (BAR_W - 2.0) / 2.0);
            let tip = format!(
                "{} {}: {:.3} x brd ({:.3}-{:.3}), {:.0} IOPS",
                crate::text::xml(t),
                crate::text::xml(w),
                r.median,
                r.min,
                r.max,
                c.iops.median
            );
            s.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{colour}\">\
                 <title>{tip}</title></rect>\n\
                 <line x1=\"{mid:.1}\" x2=\"{mid:.1}\" y1=\"{hi:.1}\" y2=\"{lo:.1}\" stroke=\"black\"/>\n",
                base - top
            ));
        }
        let lx = gx + report.targets.len() as f64 * BAR_W / 2.0;
        s.push_str(&format!(
            "<text transform=\"translate({lx:.1},{:.1}) rotate(35)\">{}</text>\n",
            y(0.0) + 12.0,
            crate::text::xml(w)
        ));
    }
    legend(s, report, session, y0, per_group);
}

/// One entry per target; a target that failed on this kernel says so (its bars are absent).
fn legend(s: &mut String, report: &PerfReport, session: &Session, y0: f64, per_group: f64) {
    let x = LEFT + report.workloads.len() as f64 * per_group + 12.0;
    for (ti, t) in report.targets.iter().enumerate() {
        let y = y0 + TOP + 16.0 * ti as f64;
        let label = match session.failures.iter().any(|f| &f.target == t) {
            true => format!("{t} (not measured: see perf.json)"),
            false => t.clone(),
        };
        s.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            COLOURS[ti % COLOURS.len()],
            x + 14.0,
            y + 9.0,
            crate::text::xml(&label)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::report::{Cell, Session, Spread};

    #[test]
    fn whiskers_stand_on_their_bars() {
        let s = |m, lo, hi| Spread {
            median: m,
            min: lo,
            max: hi,
        };
        let cell = |t: &str, r: Spread| Cell {
            target: t.into(),
            workload: "w".into(),
            rounds: 3,
            iops: s(1.0, 1.0, 1.0),
            bw_bytes_s: s(1.0, 1.0, 1.0),
            lat_mean_us: s(1.0, 1.0, 1.0),
            lat_p99_us: s(1.0, 1.0, 1.0),
            cpu_us_per_io: None,
            guest_us_per_io: None,
            ratio: Some(r),
        };
        let report = crate::perf::report::test_report(
            &["brd", "a<b", "broken"],
            vec![Session {
                kernel: "k".into(),
                kernel_release: "r".into(),
                image_hash: String::new(),
                boot_s: 0.0,
                device_features: Default::default(),
                samples: vec![],
                cells: vec![cell("brd", s(1.0, 1.0, 1.0)), cell("a<b", s(0.5, 0.4, 0.6))],
                failures: vec![crate::perf::report::Failure {
                    target: "broken".into(),
                    workload: "w".into(),
                    round: 0,
                    server_fault: true,
                    cause: "hang".into(),
                    evidence: None,
                }],
            }],
        );
        let svg = svg(&report);
        assert!(
            svg.contains("a&lt;b") && !svg.contains("a<b"),
            "names escaped"
        );
        // Every whisker's x is the middle of a bar drawn just before it.
        let mut bar_x = None;
        for l in svg.lines() {
            if let Some(r) = l.split("<rect x=\"").nth(1) {
                bar_x = r.split('"').next().map(|v| v.parse::<f64>().unwrap());
            }
            if let Some(w) = l.split("<line x1=\"").nth(1) {
                if l.contains("stroke=\"black\"") {
                    let x: f64 = w.split('"').next().unwrap().parse().unwrap();
                    assert_eq!(x, bar_x.unwrap() + (BAR_W - 2.0) / 2.0, "{l}");
                }
            }
        }
        assert_eq!(
            svg.matches("stroke=\"black\"").count(),
            2,
            "no bar for a failed target"
        );
        assert!(
            svg.contains(">broken (not measured: see perf.json)</text>"),
            "{svg}"
        );
    }
}
