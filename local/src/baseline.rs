//! The floor the `Local\\` engine's mutex is measured against (by `dlock-local-bench` in
//! dlock-tests): a glibc robust, process-shared `pthread_mutex_t` in a shared mapping, locked
//! and unlocked directly. It lives here because it is raw libc code, and this crate is the only
//! one of the workspace that holds `unsafe` code.

use std::time::Instant;

/// The median, over `batches` batches, of the time per uncontended
/// `pthread_mutex_lock` + `pthread_mutex_unlock` pair on a robust, process-shared mutex, in
/// nanoseconds (`pairs` pairs per batch, after a warm-up).
///
/// # Panics
///
/// If `batches` is 0, if the mapping or the mutex cannot be set up, or if a lock or unlock
/// fails.
pub fn robust_pthread_pair_ns(pairs: usize, batches: usize) -> f64 {
    // SAFETY: a fresh memfd, sized and mapped shared; the mutex is initialised before use and
    // used by this thread only.
    unsafe {
        let fd = libc::memfd_create(c"dlock-baseline".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0, "memfd_create");
        assert_eq!(libc::ftruncate(fd, 4096), 0);
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let m = p.cast::<libc::pthread_mutex_t>();
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut attr);
        libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
        libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
        assert_eq!(libc::pthread_mutex_init(m, &attr), 0);
        for _ in 0..10_000 {
            libc::pthread_mutex_lock(m);
            libc::pthread_mutex_unlock(m);
        }
        let mut times = Vec::with_capacity(batches);
        for _ in 0..batches {
            let start = Instant::now();
            for _ in 0..pairs {
                if libc::pthread_mutex_lock(m) != 0 || libc::pthread_mutex_unlock(m) != 0 {
                    panic!("pthread lock/unlock failed");
                }
            }
            times.push(start.elapsed().as_nanos() as f64 / pairs as f64);
        }
        libc::munmap(p, 4096);
        libc::close(fd);
        median(times)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
