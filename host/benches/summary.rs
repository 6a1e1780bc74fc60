//! The summary at the top of `docs/BENCHMARKS.md`: one line per path and target, its ratio
//! on the quiet machine and beside the CPU hog (`floors-busy`), and whether the target is
//! met, judged from the rows of the same run. Every figure is still in the full table; this
//! only picks the ones a target names.

use super::{Row, busy, stats};

/// What a ratio (the binding's median over its reference's) must be.
#[derive(Debug, Clone, Copy)]
enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Bound {
    fn met(self, ratio: f64) -> bool {
        match self {
            Self::AtLeast(bound) => ratio >= bound,
            Self::AtMost(bound) => ratio <= bound,
        }
    }

    fn text(self) -> String {
        match self {
            Self::AtLeast(bound) => format!("≥ {bound:.2}×"),
            Self::AtMost(bound) => format!("≤ {bound:.2}×"),
        }
    }
}

/// One line of the summary: the rows it judges (by figure and reference, without the busy
/// mark) and the bound each must keep.
struct Target {
    path: &'static str,
    rows: fn(figure: &str, reference: &str) -> bool,
    bound: Bound,
}

const TARGETS: &[Target] = &[
    Target {
        path: "input to an HTTP app, against rumqttc + reqwest",
        rows: |figure, reference| {
            figure.starts_with("input to an HTTP app") && reference.starts_with("hand-written")
        },
        bound: Bound::AtLeast(0.95),
    },
    Target {
        path: "input to a gRPC app, against rumqttc + tonic",
        rows: |figure, reference| {
            figure.starts_with("input to a gRPC app") && reference.starts_with("hand-written")
        },
        bound: Bound::AtLeast(0.95),
    },
    Target {
        path: "input through the pluggable `Read`, against a hand-written pluggable",
        rows: |figure, reference| {
            figure.starts_with("input through the pluggable socket (Read")
                && reference.starts_with("hand-written")
        },
        bound: Bound::AtLeast(0.95),
    },
    Target {
        path: "output over HTTP, 64 in flight, against axum + rumqttc",
        rows: |figure, _| figure.starts_with("output over HTTP") && figure.contains("in flight"),
        bound: Bound::AtLeast(0.95),
    },
    Target {
        path: "output over gRPC, 64 in flight, against tonic + rumqttc",
        rows: |figure, _| figure.starts_with("output over gRPC") && figure.contains("in flight"),
        bound: Bound::AtLeast(0.95),
    },
    Target {
        path: "output through the socket, 64 in flight, against tonic + rumqttc",
        rows: |figure, reference| {
            figure.starts_with("output through the pluggable socket (Invoke)")
                && figure.contains("in flight")
                && reference.starts_with("hand-written")
        },
        bound: Bound::AtLeast(0.95),
    },
    Target {
        path: "output one at a time, p50, each face against its floor",
        rows: |figure, reference| {
            figure.contains("one at a time, p50") && reference.starts_with("hand-written")
        },
        bound: Bound::AtMost(1.1),
    },
    Target {
        path: "output one at a time, p99, each face against its floor",
        rows: |figure, reference| {
            figure.contains("one at a time, p99") && reference.starts_with("hand-written")
        },
        bound: Bound::AtMost(1.5),
    },
    Target {
        path: "in process: input CPU per message (QoS 0, QoS 1), against a raw rumqttc subscriber",
        rows: |figure, _| {
            figure.starts_with("input QoS ")
                && figure.ends_with("handler returns at once: CPU per message, benchmark thread")
        },
        bound: Bound::AtMost(2.0),
    },
    Target {
        path: "in process: output CPU per message (QoS 0, QoS 1), against rumqttc",
        rows: |figure, _| {
            (figure.starts_with("output QoS 0, 100 B, 64 in flight: CPU")
                || figure.starts_with("output QoS 1, 100 B, 64 in flight: CPU"))
                && !figure.contains("sandbox")
        },
        bound: Bound::AtMost(1.1),
    },
    Target {
        path: "in process: output QoS 1 p50, against rumqttc",
        rows: |figure, reference| {
            figure == "output latency QoS 1, p50" && reference == "rumqttc p50"
        },
        bound: Bound::AtMost(1.15),
    },
];

/// The summary of `rows` as a Markdown table; targets none of whose rows ran are left out.
pub(crate) fn render(rows: &[Row]) -> String {
    let mut table = String::from(
        "| path | target | quiet | busy (CPU hog on one core) | met |\n|---|---|---|---|---|\n",
    );
    for target in TARGETS {
        let mut quiet = Vec::new();
        let mut busy = Vec::new();
        for row in rows.iter().filter(|row| !row.reference.is_empty()) {
            let (figure, is_busy) = busy::unmarked(&row.figure);
            if !(target.rows)(figure, &row.reference_name) {
                continue;
            }
            let ratio = stats(&row.binding).0 / stats(&row.reference).0;
            let entry = (label(figure), ratio);
            if is_busy { &mut busy } else { &mut quiet }.push(entry);
        }
        if quiet.is_empty() && busy.is_empty() {
            continue;
        }
        let all = quiet.iter().chain(&busy);
        let missed = all
            .clone()
            .filter(|(_, ratio)| !target.bound.met(*ratio))
            .count();
        let verdict = match missed {
            0 => "met".to_string(),
            n if n == all.count() => "**missed**".to_string(),
            n => format!("**missed** in {n}"),
        };
        table.push_str(&format!(
            "| {} | {} | {} | {} | {verdict} |\n",
            target.path,
            target.bound.text(),
            ratios(&quiet),
            ratios(&busy),
        ));
    }
    table
}

/// What tells apart the rows of one target: the face, the QoS, the thread count.
fn label(figure: &str) -> String {
    let mut parts = Vec::new();
    for (mark, name) in [
        ("over HTTP", "HTTP"),
        ("over gRPC", "gRPC"),
        ("pluggable socket (Invoke)", "socket"),
        ("QoS 0", "QoS 0"),
        ("1 thread", "1 thread"),
        ("2 threads", "2 threads"),
    ] {
        if figure.contains(mark) {
            parts.push(name);
        }
    }
    if figure.starts_with("input QoS 1") || figure.starts_with("output QoS 1") {
        parts.push("QoS 1");
    }
    parts.join(", ")
}

fn ratios(entries: &[(String, f64)]) -> String {
    if entries.is_empty() {
        return "—".into();
    }
    entries
        .iter()
        .map(|(label, ratio)| {
            if label.is_empty() {
                format!("{ratio:.2}×")
            } else {
                format!("{ratio:.2}× ({label})")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}
