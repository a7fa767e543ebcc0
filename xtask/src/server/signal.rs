//! The signals a scenario step or a profile may send a server, by the names YAML uses.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Sig {
    Term,
    Int,
    Kill,
    Stop,
    Cont,
    Usr1,
    Usr2,
    Quit,
    Hup,
}

impl Sig {
    /// TERM, USR1, ... (as written in YAML).
    pub fn name(self) -> &'static str {
        match self {
            Sig::Term => "TERM",
            Sig::Int => "INT",
            Sig::Kill => "KILL",
            Sig::Stop => "STOP",
            Sig::Cont => "CONT",
            Sig::Usr1 => "USR1",
            Sig::Usr2 => "USR2",
            Sig::Quit => "QUIT",
            Sig::Hup => "HUP",
        }
    }

    pub fn number(self) -> i32 {
        match self {
            Sig::Term => libc::SIGTERM,
            Sig::Int => libc::SIGINT,
            Sig::Kill => libc::SIGKILL,
            Sig::Stop => libc::SIGSTOP,
            Sig::Cont => libc::SIGCONT,
            Sig::Usr1 => libc::SIGUSR1,
            Sig::Usr2 => libc::SIGUSR2,
            Sig::Quit => libc::SIGQUIT,
            Sig::Hup => libc::SIGHUP,
        }
    }
    /// Whether the daemon is expected to exit after this signal.
    pub fn ends_daemon(self) -> bool {
        matches!(
            self,
            Sig::Term | Sig::Int | Sig::Kill | Sig::Quit | Sig::Hup
        )
    }
}
