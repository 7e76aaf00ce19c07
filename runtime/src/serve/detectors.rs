//! The face detectors the request threads share: one per worker, each on that worker's backend
//! (device), so that as many photos can be searched at once as there are workers. Detecting the
//! faces of a large photo costs about as much as a few denoising steps on the CPU, so a single
//! shared detector would make photo requests wait on each other in front of idle workers.

use std::sync::{Condvar, Mutex, MutexGuard};

use crate::detect::Detector;

/// The server's detectors; a request borrows one for the duration of its detection.
pub type DetectorPool = Pool<Detector>;

/// A fixed set of items lent out one at a time per borrower.
pub struct Pool<T> {
    free: Mutex<Vec<T>>,
    returned: Condvar,
}

impl<T> Pool<T> {
    /// A pool of `items` (at least one, or every borrower would wait forever).
    pub fn new(items: Vec<T>) -> Pool<T> {
        assert!(!items.is_empty(), "a pool needs an item");
        Pool {
            free: Mutex::new(items),
            returned: Condvar::new(),
        }
    }

    /// Runs `f` on a free item, waiting for one when all are lent. The item goes back to the
    /// pool afterwards, also when `f` panics (for detectors: a panic inside detection leaves no
    /// state the next detection depends on, each detection starts from the photo).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let item = {
            let mut free = self.lock();
            loop {
                if let Some(d) = free.pop() {
                    break d;
                }
                free = self.returned.wait(free).unwrap_or_else(|e| e.into_inner());
            }
        };
        let mut lease = Lease {
            pool: self,
            item: Some(item),
        };
        f(lease.item.as_mut().expect("leased until dropped"))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A borrowed item; dropping it returns the item to the pool.
struct Lease<'a, T> {
    pool: &'a Pool<T>,
    item: Option<T>,
}

impl<T> Drop for Lease<'_, T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.pool.lock().push(item);
            self.pool.returned.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pool;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    #[test]
    fn as_many_borrowers_at_once_as_items_and_panics_return_the_item() {
        let pool = Pool::new(vec![0usize, 1]);
        let (busy, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let start = Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    start.wait();
                    for _ in 0..50 {
                        pool.with(|item| {
                            let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            *item += 1;
                            std::thread::sleep(std::time::Duration::from_micros(200));
                            busy.fetch_sub(1, Ordering::SeqCst);
                        })
                    }
                });
            }
        });
        // Never more than two at once, and both items were used in parallel at some point.
        assert_eq!(most.load(Ordering::SeqCst), 2);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.with(|_| panic!("inside a detection"))
        }));
        assert!(caught.is_err());
        let mut items = std::mem::take(&mut *pool.lock());
        items.sort();
        // 200 uses spread over the two items (the first two from 0 and 1), none lost.
        assert_eq!(items.len(), 2);
        assert_eq!(items.iter().sum::<usize>(), 200 + 1);
    }
}
