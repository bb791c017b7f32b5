//! The Win32 facade against the mock cluster (its own process: the facade is process-global).

mod common;

use dlock::win32::*;

#[test]
fn facade_end_to_end_against_the_mock() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (follower, leader, state) = rt.block_on(common::start_cluster());
    let mut config = FacadeConfig::from_env();
    config.endpoints = Ok(vec![follower.to_string(), format!("http://{leader}")]);
    config.session_ttl = std::time::Duration::from_millis(3000);
    configure(config).expect("configured before the first facade call");

    SetLastError(0xDEAD_BEEF);
    let h = CreateMutexA(None, FALSE, Some("NameOfMutexObject"));
    assert_ne!(h, NULL, "error {}", GetLastError());
    assert_eq!(h % 4, 0);
    assert_eq!(GetLastError(), ERROR_SUCCESS);
    let h2 = CreateMutexA(None, TRUE, Some("NameOfMutexObject"));
    assert_ne!(h2, NULL);
    assert_eq!(GetLastError(), ERROR_ALREADY_EXISTS);
    assert_ne!(h, h2);

    SetLastError(0xDEAD_BEEF);
    let w: Vec<u16> = "NameOfMutexObject".encode_utf16().collect();
    let h3 = OpenMutexW(MUTEX_ALL_ACCESS, FALSE, Some(&w));
    assert_ne!(h3, NULL);
    assert_eq!(
        GetLastError(),
        0xDEAD_BEEF,
        "successful open leaves the error"
    );
    assert_eq!(OpenMutexA(MUTEX_ALL_ACCESS, FALSE, Some("missing")), NULL);
    assert_eq!(GetLastError(), ERROR_FILE_NOT_FOUND);

    SetLastError(0xDEAD_BEEF);
    assert_eq!(WaitForSingleObject(h, INFINITE), WAIT_OBJECT_0);
    assert_eq!(
        GetLastError(),
        0xDEAD_BEEF,
        "successful wait leaves the error"
    );
    let token = GetFencingToken(h3);
    assert_ne!(token, 0);

    // Another OS thread contends, and exits: its exit is reported.
    let other = std::thread::spawn(move || {
        let r = WaitForSingleObject(h, 0);
        (r, GetFencingToken(h))
    })
    .join()
    .unwrap();
    assert_eq!(other, (WAIT_TIMEOUT, 0));
    assert_eq!(state.lock().unwrap().thread_exits.len(), 1);

    assert_eq!(ReleaseMutex(h2), TRUE);
    assert_eq!(ReleaseMutex(h), FALSE);
    assert_eq!(GetLastError(), ERROR_NOT_OWNER);
    assert_eq!(GetFencingToken(h), 0);

    // A thread that acquires and exits abandons (the mock just drops ownership).
    std::thread::spawn(move || assert_eq!(WaitForSingleObject(h, 0), WAIT_OBJECT_0))
        .join()
        .unwrap();
    assert_eq!(state.lock().unwrap().thread_exits.len(), 2);
    assert!(state.lock().unwrap().owners.is_empty());

    assert_eq!(SetEvent(h), FALSE, "a mutex handle is not an event");
    assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);

    for handle in [h, h2, h3] {
        assert_eq!(CloseHandle(handle), TRUE);
    }
    assert_eq!(CloseHandle(h), FALSE);
    assert_eq!(GetLastError(), ERROR_INVALID_HANDLE);

    // Calls from inside a runtime are refused rather than deadlocking.
    let inside = rt.block_on(async { CreateMutexA(None, FALSE, Some("x")) });
    assert_eq!(inside, NULL);
    assert_eq!(GetLastError(), ERROR_NOT_SUPPORTED);
}
