//! The XDP guard's shared vocabulary.

/// Name of the per-CPU array of verdict counters (index = [`Verdict`]).
pub const VERDICTS_MAP: &str = "GW_VERDICTS";

/// What the XDP guard decided for one frame; the index into [`VERDICTS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass = 0,
    DropRateLimit = 1,
    DropSynRateLimit = 2,
    DropDenyList = 3,
    PassAllowList = 4,
    DropMalformed = 5,
}

/// Number of [`Verdict`] variants (size of the counters array).
pub const VERDICT_COUNT: u32 = 6;

impl Verdict {
    /// Every verdict, in index order.
    pub const ALL: [Verdict; VERDICT_COUNT as usize] = [
        Verdict::Pass,
        Verdict::DropRateLimit,
        Verdict::DropSynRateLimit,
        Verdict::DropDenyList,
        Verdict::PassAllowList,
        Verdict::DropMalformed,
    ];

    /// The `verdict` label value used in metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::DropRateLimit => "drop_ratelimit",
            Verdict::DropSynRateLimit => "drop_syn_ratelimit",
            Verdict::DropDenyList => "drop_denylist",
            Verdict::PassAllowList => "pass_allowlist",
            Verdict::DropMalformed => "drop_malformed",
        }
    }
}
