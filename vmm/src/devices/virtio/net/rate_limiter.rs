//! Firecracker's rate limiter: a bandwidth bucket (bytes) and an operations
//! bucket (frames), each a token bucket of `size` tokens that refills
//! completely in `refill_time` ms and starts full, plus a `one_time_burst`
//! of extra tokens that is spent first and never refills.
//!
//! An operation goes through only when every configured bucket can pay for
//! it. When one cannot, the limiter is blocked until the moment the bucket
//! will have refilled enough, and its timerfd is armed for that moment: the
//! owner registers the timerfd in the event loop and retries when it fires.
//! An operation larger than a bucket's whole `size` could never be paid for
//! at once; as in Firecracker it goes through (when the limiter is not
//! blocked), empties the bucket and leaves it in debt, which blocks the
//! limiter for the time the excess takes to refill.
//!
//! Time is an explicit argument (nanoseconds of a monotonic [`Clock`]) so
//! that the arithmetic is tested without sleeping.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use husk_api::devices::{RateLimiterConfig, TokenBucket as TokenBucketConfig};
use vmm_sys_util::timerfd::TimerFd;

const NANOS_PER_MILLI: u64 = 1_000_000;

/// Where the device reads the time: the monotonic clock (the one timerfds
/// use), or, in tests, a value the test sets.
#[derive(Clone, Debug)]
pub enum Clock {
    Monotonic(Instant),
    #[cfg(test)]
    Manual(std::sync::Arc<std::sync::atomic::AtomicU64>),
}

impl Clock {
    pub fn monotonic() -> Self {
        Clock::Monotonic(Instant::now())
    }

    /// Nanoseconds since an arbitrary origin.
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Monotonic(origin) => u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX),
            #[cfg(test)]
            Clock::Manual(ns) => ns.load(std::sync::atomic::Ordering::SeqCst),
        }
    }
}

/// One token bucket. `last_refill_ns` is the instant up to which refills
/// have been credited; it lies in the future while the bucket is in debt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    refill_time_ns: u64,
    budget: u64,
    one_time_burst: u64,
    last_refill_ns: u64,
}

impl TokenBucket {
    /// `None` when the bucket limits nothing: a zero `size` or
    /// `refill_time`, as Firecracker.
    pub fn new(config: &TokenBucketConfig, now_ns: u64) -> Option<Self> {
        if config.size == 0 || config.refill_time == 0 {
            return None;
        }
        Some(Self {
            size: config.size,
            refill_time_ns: config.refill_time.saturating_mul(NANOS_PER_MILLI),
            budget: config.size,
            one_time_burst: config.one_time_burst.unwrap_or(0),
            last_refill_ns: now_ns,
        })
    }

    /// Tokens in the bucket, burst excluded.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }

    /// The time `tokens` tokens take to refill, rounded up.
    fn refill_duration_ns(&self, tokens: u64) -> u64 {
        let ns = (u128::from(tokens) * u128::from(self.refill_time_ns)).div_ceil(u128::from(self.size));
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// Credits the tokens earned since `last_refill_ns`, keeping the
    /// fraction of a token already earned for the next time.
    fn refill(&mut self, now_ns: u64) {
        if now_ns <= self.last_refill_ns {
            return;
        }
        if self.budget >= self.size {
            self.last_refill_ns = now_ns;
            return;
        }
        let elapsed = u128::from(now_ns - self.last_refill_ns);
        let earned = elapsed * u128::from(self.size) / u128::from(self.refill_time_ns);
        let missing = u128::from(self.size - self.budget);
        if earned >= missing {
            self.budget = self.size;
            self.last_refill_ns = now_ns;
        } else {
            // `earned < missing <= size`, so it fits in a u64, and the time
            // it stands for is at most `elapsed`.
            self.budget += earned as u64;
            let credited = earned * u128::from(self.refill_time_ns) / u128::from(self.size);
            self.last_refill_ns += credited as u64;
        }
    }

    /// How long until the bucket can pay for `tokens`: 0 when it can now.
    pub fn wait_ns(&mut self, tokens: u64, now_ns: u64) -> u64 {
        self.refill(now_ns);
        if tokens <= self.one_time_burst.saturating_add(self.budget) {
            return 0;
        }
        let from_budget = tokens - self.one_time_burst;
        if from_budget > self.size {
            // Never payable at once: allowed as soon as no debt is
            // outstanding (see the module documentation).
            return self.last_refill_ns.saturating_sub(now_ns);
        }
        let ready_at = self.last_refill_ns.saturating_add(self.refill_duration_ns(from_budget - self.budget));
        ready_at.saturating_sub(now_ns).max(1)
    }

    /// Takes `tokens`, the one-time burst first. Returns the instant the
    /// bucket's debt is paid when it had to go into debt.
    pub fn consume(&mut self, tokens: u64, now_ns: u64) -> Option<u64> {
        self.refill(now_ns);
        let from_burst = tokens.min(self.one_time_burst);
        self.one_time_burst -= from_burst;
        let rest = tokens - from_burst;
        if rest <= self.budget {
            self.budget -= rest;
            return None;
        }
        let debt = rest - self.budget;
        self.budget = 0;
        self.last_refill_ns = self.last_refill_ns.max(now_ns).saturating_add(self.refill_duration_ns(debt));
        Some(self.last_refill_ns)
    }
}

/// Whether an operation may go through now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Not now; this call blocked the limiter and armed its timer.
    Throttled,
    /// Not now; the limiter was already blocked.
    Blocked,
}

/// A bandwidth and an operations bucket with the timer that ends a block.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    /// Set while blocked; the timer is armed for this instant.
    blocked_until_ns: Option<u64>,
}

impl RateLimiter {
    /// `None` when the configuration limits nothing.
    pub fn from_config(config: &RateLimiterConfig, now_ns: u64) -> io::Result<Option<Self>> {
        let bandwidth = config.bandwidth.as_ref().and_then(|bucket| TokenBucket::new(bucket, now_ns));
        let ops = config.ops.as_ref().and_then(|bucket| TokenBucket::new(bucket, now_ns));
        if bandwidth.is_none() && ops.is_none() {
            return Ok(None);
        }
        let timer = TimerFd::new()?;
        // Non-blocking, so that draining a timer that was re-armed after it
        // fired (which clears its expiration count) cannot stall the event
        // loop.
        // SAFETY: F_SETFL on a timerfd this function owns; no memory is passed.
        let ret = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(Self { bandwidth, ops, timer, blocked_until_ns: None }))
    }

    pub fn is_blocked(&self, now_ns: u64) -> bool {
        self.blocked_until_ns.is_some_and(|until| now_ns < until)
    }

    /// Whether one operation of `bytes` bytes may go through now. Consumes
    /// nothing: call [`consume`](Self::consume) once it has gone through.
    pub fn admit(&mut self, bytes: u64, now_ns: u64) -> Admission {
        if self.is_blocked(now_ns) {
            return Admission::Blocked;
        }
        self.blocked_until_ns = None;
        let ops_wait = self.ops.as_mut().map_or(0, |bucket| bucket.wait_ns(1, now_ns));
        let bandwidth_wait = self.bandwidth.as_mut().map_or(0, |bucket| bucket.wait_ns(bytes, now_ns));
        let wait = ops_wait.max(bandwidth_wait);
        if wait == 0 {
            return Admission::Admitted;
        }
        self.block_until(now_ns.saturating_add(wait), now_ns);
        Admission::Throttled
    }

    /// Charges one operation of `bytes` bytes.
    pub fn consume(&mut self, bytes: u64, now_ns: u64) {
        let ops_debt = self.ops.as_mut().and_then(|bucket| bucket.consume(1, now_ns));
        let bandwidth_debt = self.bandwidth.as_mut().and_then(|bucket| bucket.consume(bytes, now_ns));
        if let Some(until) = ops_debt.max(bandwidth_debt) {
            self.block_until(until, now_ns);
        }
    }

    fn block_until(&mut self, until_ns: u64, now_ns: u64) {
        self.blocked_until_ns = Some(until_ns);
        // A zero duration would disarm the timer instead of firing it.
        let delay = Duration::from_nanos(until_ns.saturating_sub(now_ns).max(1));
        if let Err(err) = self.timer.reset(delay, None) {
            // Only the wake-up is lost: the next queue or TAP event retries.
            tracing::error!("arming a rate limiter timer: {err}");
        }
    }

    /// The timer fired: drains it. The owner then retries what was blocked
    /// ([`admit`](Self::admit) decides with the current time).
    pub fn on_timer(&mut self) {
        match self.timer.wait() {
            Ok(_) => {}
            Err(err) if err.errno() == libc::EAGAIN => {}
            Err(err) => tracing::warn!("reading a rate limiter timer: {err}"),
        }
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = NANOS_PER_MILLI;

    fn bucket(size: u64, one_time_burst: Option<u64>, refill_time: u64) -> TokenBucketConfig {
        TokenBucketConfig { size, one_time_burst, refill_time }
    }

    #[test]
    fn zero_size_or_refill_time_limits_nothing() {
        assert!(TokenBucket::new(&bucket(0, None, 100), 0).is_none());
        assert!(TokenBucket::new(&bucket(100, None, 0), 0).is_none());
        let config = RateLimiterConfig { bandwidth: Some(bucket(0, None, 10)), ops: None };
        assert!(RateLimiter::from_config(&config, 0).unwrap().is_none());
        assert!(RateLimiter::from_config(&RateLimiterConfig::default(), 0).unwrap().is_none());
    }

    #[test]
    fn bucket_starts_full_and_refills_linearly() {
        let mut b = TokenBucket::new(&bucket(1000, None, 100), 0).unwrap();
        assert_eq!(b.wait_ns(1000, 0), 0);
        assert_eq!(b.consume(1000, 0), None);
        assert_eq!(b.budget(), 0);
        // 1000 tokens per 100 ms: 1 token per 100 µs.
        assert_eq!(b.wait_ns(1, 0), 100_000);
        assert_eq!(b.wait_ns(500, 0), 50 * MS);
        assert_eq!(b.wait_ns(500, 20 * MS), 30 * MS);
        b.refill(50 * MS);
        assert_eq!(b.budget(), 500);
        // Never above size.
        b.refill(10_000 * MS);
        assert_eq!(b.budget(), 1000);
    }

    #[test]
    fn fractions_of_a_token_are_not_lost() {
        // 3 tokens per 10 ms: one every 3.33 ms.
        let mut b = TokenBucket::new(&bucket(3, None, 10), 0).unwrap();
        b.consume(3, 0);
        for step in 1..=30 {
            b.refill(step * MS);
        }
        // 30 ms earn 9 tokens, capped at 3: full, whatever the step size.
        assert_eq!(b.budget(), 3);
        b.consume(3, 30 * MS);
        b.refill(30 * MS + 2 * MS);
        assert_eq!(b.budget(), 0);
        b.refill(30 * MS + 4 * MS);
        assert_eq!(b.budget(), 1);
        b.refill(30 * MS + 7 * MS);
        assert_eq!(b.budget(), 2);
    }

    #[test]
    fn one_time_burst_is_spent_first_and_never_refills() {
        let mut b = TokenBucket::new(&bucket(100, Some(250), 1000), 0).unwrap();
        assert_eq!(b.wait_ns(350, 0), 0);
        b.consume(200, 0);
        assert_eq!((b.one_time_burst(), b.budget()), (50, 100));
        b.consume(100, 0);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 50));
        // 10 missing tokens at 100 per second.
        assert_eq!(b.wait_ns(60, 0), 100 * MS);
        b.refill(10_000 * MS);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 100));
    }

    #[test]
    fn oversized_request_goes_through_into_debt() {
        let mut b = TokenBucket::new(&bucket(100, None, 100), 0).unwrap();
        b.consume(40, 0);
        // 250 > size: payable now (no debt), leaves 250 - 60 = 190 tokens
        // of debt, i.e. 190 ms.
        assert_eq!(b.wait_ns(250, 0), 0);
        assert_eq!(b.consume(250, 0), Some(190 * MS));
        assert_eq!(b.budget(), 0);
        assert_eq!(b.wait_ns(250, 100 * MS), 90 * MS);
        assert_eq!(b.wait_ns(1, 100 * MS), 91 * MS);
        assert_eq!(b.wait_ns(1, 191 * MS), 0);
    }

    fn manual_limiter(config: RateLimiterConfig) -> RateLimiter {
        RateLimiter::from_config(&config, 0).unwrap().unwrap()
    }

    #[test]
    fn limiter_needs_both_buckets() {
        let mut limiter = manual_limiter(RateLimiterConfig {
            bandwidth: Some(bucket(3000, None, 1000)),
            ops: Some(bucket(2, None, 1000)),
        });
        assert_eq!(limiter.admit(1000, 0), Admission::Admitted);
        limiter.consume(1000, 0);
        assert_eq!(limiter.admit(1000, 0), Admission::Admitted);
        limiter.consume(1000, 0);
        // Bytes remain (1000) but the ops bucket is empty: one op refills
        // in 500 ms.
        assert_eq!(limiter.admit(1000, 0), Admission::Throttled);
        assert!(limiter.is_blocked(499 * MS));
        assert_eq!(limiter.admit(1000, 499 * MS), Admission::Blocked);
        assert_eq!(limiter.admit(1000, 500 * MS), Admission::Admitted);
        limiter.consume(1000, 500 * MS);
        // Now bytes: 1000 of the 1500 earned in 500 ms spent → 1500 left,
        // enough; ops: empty again until 1000 ms.
        assert_eq!(limiter.admit(1500, 500 * MS), Admission::Throttled);
        assert_eq!(limiter.admit(1500, 1000 * MS), Admission::Admitted);
    }

    #[test]
    fn limiter_blocks_on_bandwidth_and_arms_its_timer() {
        let mut limiter = manual_limiter(RateLimiterConfig { bandwidth: Some(bucket(1000, None, 10)), ops: None });
        assert_eq!(limiter.admit(1000, 0), Admission::Admitted);
        limiter.consume(1000, 0);
        assert_eq!(limiter.admit(600, 0), Admission::Throttled);
        assert!(limiter.timer.is_armed().unwrap());
        // The real timer is armed for 6 ms; wait for it to fire.
        let mut pollfd = libc::pollfd { fd: limiter.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one valid pollfd, with a timeout.
        let ready = unsafe { libc::poll(&mut pollfd, 1, 2000) };
        assert_eq!(ready, 1);
        limiter.on_timer();
        // Draining twice does not block.
        limiter.on_timer();
        assert_eq!(limiter.admit(600, 6 * MS), Admission::Admitted);
    }

    #[test]
    fn oversized_frame_blocks_the_limiter_after_it() {
        let mut limiter = manual_limiter(RateLimiterConfig { bandwidth: Some(bucket(1000, None, 100)), ops: None });
        assert_eq!(limiter.admit(3000, 0), Admission::Admitted);
        limiter.consume(3000, 0);
        // 2000 tokens of debt: 200 ms.
        assert!(limiter.is_blocked(199 * MS));
        assert_eq!(limiter.admit(1, 199 * MS), Admission::Blocked);
        assert!(!limiter.is_blocked(200 * MS));
        assert_eq!(limiter.admit(1, 200 * MS), Admission::Throttled);
        assert_eq!(limiter.admit(1, 200 * MS + 100_000), Admission::Admitted);
    }

    #[test]
    fn manual_clock_reads_what_the_test_sets() {
        let ns = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(5));
        let clock = Clock::Manual(ns.clone());
        assert_eq!(clock.now_ns(), 5);
        ns.store(7, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(clock.now_ns(), 7);
        let real = Clock::monotonic();
        assert!(real.now_ns() <= real.now_ns());
    }
}
