//! Budgets for the bytes TileDB-ML views materialise: every buffer a view
//! owns instead of borrowing from its field (a strided or byte-swapped
//! tensor, a copy of bytes the pickle reader had to own, JSON text, a
//! safetensors header), counted each time it is made. A pickle that
//! references one memoised object many times therefore pays for every
//! reference it makes the decoder copy, not once for what it parsed.
//!
//! Three caps, each checked before the bytes are allocated:
//! - per view (one file of a model's directory), [`ViewLimits::view_bytes`];
//! - per model (all its views), [`ViewLimits::model_bytes`];
//! - per mount, a [`MemoryPool`] shared by every decoded model: a model's
//!   bytes stay charged to it while any of its views is alive (kept by the
//!   mount or an open file), through the [`Reservation`] they share.
//!
//! Over a cap the view fails with [`OverBudget`], naming the cap and its
//! limit; what it had charged is given back.
//!
//! The mount's pool is the one memory budget for everything decoded: a
//! field's bytes are charged to it too while they are in memory
//! ([`ModelBudget::hold_field`]), and once the decode is done the model
//! keeps charged only what stays resident ([`ModelBudget::finish`]); what
//! was spilled to disk is given back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which cap a view ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    View,
    Model,
    Mount,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::View => "per-view",
            Scope::Model => "per-model",
            Scope::Mount => "per-mount (--view-memory)",
        })
    }
}

/// A view would materialise more than a cap allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("views would materialise more than the {scope} limit of {limit} bytes")]
pub struct OverBudget {
    pub scope: Scope,
    /// The cap, in bytes.
    pub limit: u64,
}

/// The materialised bytes every decoded model of a mount shares; cheap to
/// clone (one counter behind an `Arc`).
#[derive(Debug, Clone)]
pub struct MemoryPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    used: AtomicU64,
    limit: u64,
}

impl MemoryPool {
    /// A pool of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        MemoryPool {
            inner: Arc::new(PoolInner {
                used: AtomicU64::new(0),
                limit,
            }),
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// The pool's limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    fn take(&self, bytes: u64) -> Result<(), OverBudget> {
        let limit = self.inner.limit;
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(bytes).filter(|t| *t <= limit)
            })
            .map(|_| ())
            .map_err(|_| OverBudget {
                scope: Scope::Mount,
                limit,
            })
    }

    /// Charges `bytes` whatever the limit (bytes already in memory).
    fn add(&self, bytes: u64) {
        self.inner.used.fetch_add(bytes, Ordering::AcqRel);
    }

    fn give_back(&self, bytes: u64) {
        let _ = self
            .inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(bytes)));
    }
}

/// The per-view and per-model caps, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewLimits {
    pub view_bytes: u64,
    pub model_bytes: u64,
}

impl Default for ViewLimits {
    /// 1 GiB per view and 2 GiB per model: a real model's views borrow
    /// their tensors from the field (what they own is headers, JSON and the
    /// rare transposed or big-endian weight), so these only stop pickles
    /// that make the decoder copy one object over and over.
    fn default() -> Self {
        ViewLimits {
            view_bytes: 1 << 30,
            model_bytes: 2 << 30,
        }
    }
}

/// Bytes of one model's views charged to a pool; given back when the last
/// holder (the model and each of its view files) is dropped.
#[derive(Debug)]
pub struct Reservation {
    pool: MemoryPool,
    bytes: u64,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.pool.give_back(self.bytes);
    }
}

/// What decoding one model may materialise; hands out a [`Budget`] per view.
#[derive(Debug)]
pub struct ModelBudget {
    pool: MemoryPool,
    limits: ViewLimits,
    /// Bytes the views materialised (the per-model cap's count).
    used: AtomicU64,
    /// Bytes charged to the pool now: `used` plus the fields held.
    held: AtomicU64,
}

impl ModelBudget {
    pub fn new(pool: MemoryPool, limits: ViewLimits) -> Self {
        ModelBudget {
            pool,
            limits,
            used: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// Charges a field's `bytes` to the pool before they are read into
    /// memory (they count against the mount's cap only, not the per-view
    /// and per-model caps on what views materialise).
    ///
    /// # Errors
    /// [`OverBudget`] (the mount's cap) when they do not fit.
    pub fn hold_field(&self, bytes: u64) -> Result<(), OverBudget> {
        self.pool.take(bytes)?;
        self.held.fetch_add(bytes, Ordering::AcqRel);
        Ok(())
    }

    /// Gives back `bytes` charged by [`ModelBudget::hold_field`] (a field
    /// dropped or spilled to disk).
    pub fn release_field(&self, bytes: u64) {
        self.unhold(bytes);
    }

    fn unhold(&self, bytes: u64) {
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| Some(h.saturating_sub(bytes)));
        self.pool.give_back(bytes);
    }

    /// A budget for the next view (or field, whose views share it).
    pub fn view(&self) -> Budget<'_> {
        Budget {
            model: Some(self),
            used: AtomicU64::new(0),
            limit: self.limits.view_bytes,
        }
    }

    /// Ends the decode: `resident` bytes (what the model keeps in memory)
    /// stay charged to the pool until the returned reservation is dropped;
    /// the rest of what was charged (spilled to disk) is given back.
    pub fn finish(self, resident: u64) -> Reservation {
        let held = self.held.load(Ordering::Acquire);
        if resident >= held {
            self.pool.add(resident - held);
        } else {
            self.pool.give_back(held - resident);
        }
        Reservation {
            pool: self.pool,
            bytes: resident,
        }
    }

    /// Bytes the views materialised so far (whether kept or spilled).
    pub fn materialized(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// The budget of one view being decoded; charge it before allocating.
/// Dropped without [`Budget::keep`], it gives its bytes back.
#[derive(Debug)]
pub struct Budget<'m> {
    model: Option<&'m ModelBudget>,
    used: AtomicU64,
    limit: u64,
}

impl Budget<'_> {
    /// A budget bounded by `limit` bytes alone (tests, tools).
    pub fn standalone(limit: u64) -> Budget<'static> {
        Budget {
            model: None,
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Records `bytes` about to be materialised.
    ///
    /// # Errors
    /// [`OverBudget`] naming the first cap it would pass (view, model,
    /// mount); nothing is charged then.
    pub fn charge(&self, bytes: usize) -> Result<(), OverBudget> {
        let n = u64::try_from(bytes).unwrap_or(u64::MAX);
        let view = self.used.load(Ordering::Relaxed);
        if view.checked_add(n).is_none_or(|t| t > self.limit) {
            return Err(OverBudget {
                scope: Scope::View,
                limit: self.limit,
            });
        }
        if let Some(m) = self.model {
            let limit = m.limits.model_bytes;
            m.used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                    u.checked_add(n).filter(|t| *t <= limit)
                })
                .map_err(|_| OverBudget {
                    scope: Scope::Model,
                    limit,
                })?;
            if let Err(e) = m.pool.take(n) {
                m.used.fetch_sub(n, Ordering::AcqRel);
                return Err(e);
            }
            m.held.fetch_add(n, Ordering::AcqRel);
        }
        self.used.fetch_add(n, Ordering::AcqRel);
        Ok(())
    }

    /// Bytes this view may still materialise under every cap.
    pub fn remaining(&self) -> u64 {
        let view = self.limit.saturating_sub(self.used.load(Ordering::Relaxed));
        match self.model {
            None => view,
            Some(m) => view
                .min(m.limits.model_bytes.saturating_sub(m.used.load(Ordering::Relaxed)))
                .min(m.pool.limit().saturating_sub(m.pool.used())),
        }
    }

    /// Bytes charged so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The view is kept: its bytes stay charged to the model.
    pub fn keep(self) {
        self.used.store(0, Ordering::Relaxed);
    }
}

impl Drop for Budget<'_> {
    fn drop(&mut self) {
        let n = self.used.load(Ordering::Relaxed);
        if let Some(m) = self.model
            && n > 0
        {
            m.used.fetch_sub(n, Ordering::AcqRel);
            m.unhold(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_apply_in_order_and_failed_views_give_back() {
        let pool = MemoryPool::new(100);
        let model = ModelBudget::new(
            pool.clone(),
            ViewLimits {
                view_bytes: 40,
                model_bytes: 60,
            },
        );
        let a = model.view();
        a.charge(30).unwrap();
        assert_eq!(a.charge(11).unwrap_err().scope, Scope::View);
        a.keep();
        let b = model.view();
        assert_eq!(b.charge(41).unwrap_err().scope, Scope::View);
        assert_eq!(b.charge(40).unwrap_err().scope, Scope::Model);
        b.charge(25).unwrap();
        assert_eq!(pool.used(), 55);
        drop(b);
        assert_eq!(pool.used(), 30, "a dropped view gives its bytes back");
        let other = ModelBudget::new(pool.clone(), ViewLimits::default());
        let c = other.view();
        assert_eq!(c.remaining(), 70);
        assert_eq!(
            c.charge(71).unwrap_err(),
            OverBudget {
                scope: Scope::Mount,
                limit: 100
            }
        );
        c.charge(70).unwrap();
        c.keep();
        let held = other.finish(70);
        assert_eq!((held.bytes(), pool.used()), (70, 100));
        drop(held);
        assert_eq!(pool.used(), 30);
        drop(model.finish(30));
        assert_eq!(pool.used(), 0);
        assert!(Budget::standalone(5).charge(usize::MAX).is_err());
    }

    #[test]
    fn fields_count_against_the_pool_and_only_what_stays_is_kept() {
        let pool = MemoryPool::new(100);
        let model = ModelBudget::new(pool.clone(), ViewLimits::default());
        model.hold_field(60).unwrap();
        assert_eq!(model.hold_field(41).unwrap_err().scope, Scope::Mount);
        let v = model.view();
        v.charge(30).unwrap();
        v.keep();
        assert_eq!(pool.used(), 90);
        // The field and most of the view went to disk: 5 bytes stay.
        let kept = model.finish(5);
        assert_eq!((kept.bytes(), pool.used()), (5, 5));
        drop(kept);
        assert_eq!(pool.used(), 0);
        // What stays can be more than was charged (metadata.json).
        let small = ModelBudget::new(pool.clone(), ViewLimits::default());
        small.hold_field(10).unwrap();
        small.release_field(10);
        let kept = small.finish(7);
        assert_eq!(pool.used(), 7);
        drop(kept);
        assert_eq!(pool.used(), 0);
    }
}
