//! Feeding crafted frames to the real kernel programs with BPF_PROG_TEST_RUN, and
//! reading back verdicts and map state through the daemon's own map access.

use anyhow::Result;
use api_guard::{
    kernel::{Datapath, KernelMaps as _, LoadOptions},
    policy::Policy,
};
use aya::programs::{TestRun, TestRunOptions};

/// TC actions the classifier returns.
pub const TC_ACT_PIPE: u32 = 3;
pub const TC_ACT_SHOT: u32 = 2;

/// XDP actions the pre-filter returns.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// A freshly loaded, unattached datapath watching `ports`. Each harness has its own
/// maps, so harnesses in parallel tests never share kernel state.
pub struct Harness {
    pub datapath: Datapath,
}

impl Harness {
    pub fn new(ports: &[u16]) -> Result<Self> {
        Self::load(&LoadOptions::default(), ports)
    }

    /// A harness with its maps sized by `opts`.
    pub fn load(opts: &LoadOptions, ports: &[u16]) -> Result<Self> {
        let mut datapath = Datapath::load(opts)?;
        datapath.watch_ports(ports)?;
        Ok(Self { datapath })
    }

    /// A harness enforcing `policy` (parse it from flags with [`policy`]), with
    /// a fresh heartbeat, as the daemon would leave it.
    pub fn with_policy(ports: &[u16], policy: &Policy) -> Result<Self> {
        let mut h = Self::new(ports)?;
        h.datapath.apply_policy(&policy.tables(0))?;
        h.datapath.beat(api_guard::clock::monotonic_ns())?;
        Ok(h)
    }

    /// Runs the ingress program once on `frame`; returns its TC action and the
    /// frame as the program left it.
    pub fn run_out(&self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self.datapath.ingress()?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Runs the egress program once on `frame` and returns its TC action.
    pub fn run_egress(&self, frame: &[u8]) -> Result<u32> {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self.datapath.egress()?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })?;
        Ok(result.return_value)
    }

    /// Runs the XDP pre-filter once on `frame` and returns its XDP action.
    pub fn run_xdp(&self, frame: &[u8]) -> Result<u32> {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self.datapath.xdp()?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })?;
        Ok(result.return_value)
    }

    /// Runs the ingress program once on `frame` and returns its TC action.
    pub fn run(&self, frame: &[u8]) -> Result<u32> {
        Ok(self.run_out(frame)?.0)
    }
}

/// The policy `api-guard run` would build from these flags.
pub fn policy(flags: &[&str]) -> Result<Policy> {
    use api_guard::cli::{Command, try_parse_from};
    let mut argv = vec!["api-guard", "run", "--iface", "lo", "--port", "1"];
    // No daemon beats here: closed unless a test asks about the fail mode, so a
    // long benchmark never measures the fail-open path by accident.
    if !flags
        .iter()
        .any(|f| matches!(*f, "--fail-mode" | "--heartbeat-timeout"))
    {
        argv.extend_from_slice(&["--fail-mode", "closed"]);
    }
    argv.extend_from_slice(flags);
    let Command::Run(args) = try_parse_from(argv)?.command else {
        anyhow::bail!("not a run command");
    };
    args.policy().map_err(anyhow::Error::msg)
}

/// One client→server connection driven through a [`Harness`]: its segments
/// carry consecutive sequence numbers, as a real TCP sender's do.
pub struct Stream {
    pub src: std::net::IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// The sequence number of the next byte to send.
    pub next: u32,
}

impl Stream {
    /// Opens the stream with a SYN through `h` (the kernel sees the handshake).
    pub fn open(h: &Harness, dport: u16, src: std::net::IpAddr, sport: u16) -> Self {
        let syn = crate::packet::Tcp {
            sport,
            seq: 5000,
            ..crate::packet::Tcp::syn(dport)
        };
        assert_eq!(h.run(&crate::packet::from(src, &syn)).unwrap(), TC_ACT_PIPE);
        Stream {
            src,
            sport,
            dport,
            next: 5001,
        }
    }

    /// The frame of a segment `ahead` bytes past the next (not sent).
    pub fn frame_ahead(&self, ahead: u32, payload: &[u8]) -> Vec<u8> {
        let tcp = crate::packet::Tcp {
            sport: self.sport,
            seq: self.next.wrapping_add(ahead),
            ..crate::packet::Tcp::data(self.dport, payload)
        };
        crate::packet::from(self.src, &tcp)
    }

    /// The frame of the next segment (not yet sent).
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        self.frame_ahead(0, payload)
    }

    /// Sends the next segment; advances only if it was let through, as TCP
    /// would retransmit a dropped one.
    pub fn send(&mut self, h: &Harness, payload: &[u8]) -> u32 {
        let action = h.run(&self.frame(payload)).unwrap();
        if action == TC_ACT_PIPE {
            self.next = self.next.wrapping_add(payload.len() as u32);
        }
        action
    }

    /// Sends a segment `ahead` bytes past the next (out of order); `next`
    /// does not move.
    pub fn send_ahead(&self, h: &Harness, ahead: u32, payload: &[u8]) -> u32 {
        h.run(&self.frame_ahead(ahead, payload)).unwrap()
    }
}
