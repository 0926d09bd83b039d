//! Agent options from the kernel command line (`husk.*=…`).
//!
//! Dotted parameters are not handed to init as arguments or environment by
//! the kernel, so the agent reads them from `/proc/cmdline`.

use crate::AgentError;

/// What the agent does once it has announced that it is ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadyAction {
    /// Stay up and supervise (the normal case).
    #[default]
    Wait,
    /// Power off at once: boot-time measurements and boot tests.
    PowerOff,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentOptions {
    /// `husk.ready_action=wait|poweroff`
    pub ready_action: ReadyAction,
}

impl AgentOptions {
    pub fn from_proc_cmdline() -> Result<Self, AgentError> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(AgentError::Cmdline)?;
        Self::parse(&cmdline)
    }

    /// Parses the `husk.` options of a kernel command line; other parameters
    /// belong to the kernel and are skipped. An unknown `husk.` option is an
    /// error: a typo must not silently change what the VM does.
    pub fn parse(cmdline: &str) -> Result<Self, AgentError> {
        let mut options = Self::default();
        for param in cmdline.split_ascii_whitespace() {
            let Some(option) = param.strip_prefix("husk.") else {
                continue;
            };
            let bad = |reason| AgentError::BadOption { option: param.to_owned(), reason };
            let (key, value) = option.split_once('=').ok_or_else(|| bad("expected husk.KEY=VALUE"))?;
            match key {
                "ready_action" => {
                    options.ready_action = match value {
                        "wait" => ReadyAction::Wait,
                        "poweroff" => ReadyAction::PowerOff,
                        _ => return Err(bad("ready_action is wait or poweroff")),
                    }
                }
                _ => return Err(bad("unknown husk option")),
            }
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_waiting_and_skips_kernel_parameters() {
        let options = AgentOptions::parse("console=ttyS0 quiet reboot=k panic=-1\n").unwrap();
        assert_eq!(options.ready_action, ReadyAction::Wait);
    }

    #[test]
    fn reads_ready_action() {
        let options = AgentOptions::parse("quiet husk.ready_action=poweroff").unwrap();
        assert_eq!(options.ready_action, ReadyAction::PowerOff);
        let options = AgentOptions::parse("husk.ready_action=wait").unwrap();
        assert_eq!(options.ready_action, ReadyAction::Wait);
    }

    #[test]
    fn rejects_unknown_or_malformed_husk_options() {
        for cmdline in ["husk.ready_action=reboot", "husk.readyaction=wait", "husk.ready_action"] {
            let err = AgentOptions::parse(cmdline).unwrap_err();
            assert!(matches!(err, AgentError::BadOption { .. }), "{cmdline}: {err}");
            assert!(err.to_string().contains(cmdline), "error names the option: {err}");
        }
    }
}
