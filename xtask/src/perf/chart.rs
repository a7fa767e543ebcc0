//! perf.svg: one bar group per workload, one bar per target = its IOPS over brd's in the same
//! round (median), with a whisker from the lowest to the highest round. One chart per kernel,
//! stacked. Plain SVG a browser opens; no dependencies.

use super::report::{PerfReport, Session};

const BAR_W: f64 = 14.0;
const GROUP_GAP: f64 = 24.0;
const PLOT_H: f64 = 220.0;
const LEFT: f64 = 56.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 110.0;
/// One colour per target position (cycled).
const COLOURS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
];

pub fn svg(report: &PerfReport) -> String {
    let groups = report.workloads.len().max(1) as f64;
    let per_group = report.targets.len().max(1) as f64 * BAR_W + GROUP_GAP;
    let width = LEFT + groups * per_group + 160.0;
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
        "<text x=\"{LEFT}\" y=\"{:.1}\" font-size=\"13\">{} — IOPS relative to brd in the same round \
         (median, whisker: min–max of {} rounds); {} {}, clock {}</text>\n",
        y0 + 20.0,
        esc(&format!("{} ({})", session.kernel, session.kernel_release)),
        report.rounds,
        esc(&report.accelerator),
        report.vcpus,
        esc(&report.clock)
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
            s.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\">\
                 <title>{} {}: {:.3} x brd ({:.3}-{:.3}), {:.0} IOPS</title></rect>\n\
                 <line x1=\"{2:.1}\" x2=\"{2:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n",
                y(r.median),
                BAR_W - 2.0,
                y(0.0) - y(r.median),
                esc(t),
                esc(w),
                r.median,
                r.min,
                r.max,
                c.iops.median,
                y(r.max),
                y(r.min),
            ));
        }
        let lx = gx + report.targets.len() as f64 * BAR_W / 2.0;
        s.push_str(&format!(
            "<text transform=\"translate({lx:.1},{:.1}) rotate(35)\">{}</text>\n",
            y(0.0) + 12.0,
            esc(w)
        ));
    }
    legend(s, report, y0, per_group);
}

fn legend(s: &mut String, report: &PerfReport, y0: f64, per_group: f64) {
    let x = LEFT + report.workloads.len() as f64 * per_group + 12.0;
    for (ti, t) in report.targets.iter().enumerate() {
        let y = y0 + TOP + 16.0 * ti as f64;
        s.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            COLOURS[ti % COLOURS.len()],
            x + 14.0,
            y + 9.0,
            esc(t)
        ));
    }
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
