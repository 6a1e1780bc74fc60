//! A busy machine, made the same way in every run: a process of its own (this benchmark
//! binary started again with `cpu-hog`) spinning on one core, pinned there, for as long as
//! the rows measured under it. Both sides of each row (the binding and its floor) run under
//! it, so the ratio says how each copes with a neighbour that never yields.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::Row;

/// The core the hog spins on.
const CORE: usize = 0;

/// What is added to the name of a row measured beside the hog.
pub(crate) fn marked(mut row: Row) -> Row {
    row.figure = format!("{}, busy (a CPU hog pinned to core {CORE})", row.figure);
    row
}

/// A row's figure without the busy mark, and whether it had it.
pub(crate) fn unmarked(figure: &str) -> (&str, bool) {
    match figure.strip_suffix(&format!(", busy (a CPU hog pinned to core {CORE})")) {
        Some(figure) => (figure, true),
        None => (figure, false),
    }
}

pub(crate) struct Hog {
    child: Child,
}

impl Hog {
    /// Starts the hog and returns once it spins on its core.
    pub(crate) async fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().expect("the benchmark's path"))
            .args(["cpu-hog", &CORE.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the CPU hog");
        let stdout = child.stdout.take().expect("piped");
        let line = tokio::time::timeout(Duration::from_secs(10), async {
            BufReader::new(stdout).lines().next_line().await
        })
        .await
        .expect("the CPU hog starts within 10 s")
        .expect("reading the CPU hog's output");
        assert_eq!(
            line.as_deref(),
            Some(format!("spinning on core {CORE}").as_str()),
            "the CPU hog did not start"
        );
        Self { child }
    }

    pub(crate) async fn stop(mut self) {
        self.child.kill().await.expect("stopping the CPU hog");
    }
}

/// The hog itself (`cpu-hog CORE`): pins this process to the core, says so, and spins
/// until it is killed, or until its standard input closes: the benchmark holds the other
/// end, so a benchmark that dies, however it dies, leaves no hog behind.
pub(crate) fn spin(args: &[String]) {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    use std::io::{Read as _, Write as _};

    std::thread::spawn(|| {
        let _ = std::io::stdin().read(&mut [0]);
        std::process::exit(0);
    });

    let core: usize = args
        .first()
        .and_then(|core| core.parse().ok())
        .expect("cpu-hog CORE");
    let mut set = CpuSet::new();
    set.set(core).expect("a core this machine has");
    // This thread only: the one watching standard input sleeps wherever it likes.
    sched_setaffinity(Pid::from_raw(0), &set).expect("pinning the CPU hog");
    let mut stdout = std::io::stdout();
    writeln!(stdout, "spinning on core {core}").expect("stdout");
    stdout.flush().expect("stdout");
    let mut counter = 0_u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}
