//! systemd notify protocol against a real `AF_UNIX` datagram socket.
//!
//! `NOTIFY_SOCKET` and `WATCHDOG_*` are process-global, so this binary holds
//! exactly one test, which sets them before any thread or runtime exists.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use sms_conduit::service::notify;
use tokio_util::sync::CancellationToken;

fn recv(sock: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(_) => None,
    }
}

#[test]
fn notifications_and_watchdog_reach_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // No other thread exists yet in this process (one test per binary).
    std::env::set_var("NOTIFY_SOCKET", &path);
    std::env::set_var("WATCHDOG_USEC", "200000");
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());

    notify::ready().unwrap();
    assert_eq!(recv(&sock).as_deref(), Some("READY=1\n"));
    notify::reloading().unwrap();
    let msg = recv(&sock).unwrap();
    assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg}");
    notify::status("2 carriers bound\nREADY=1").unwrap();
    assert_eq!(
        recv(&sock).as_deref(),
        Some("STATUS=2 carriers bound READY=1\n")
    );
    notify::stopping().unwrap();
    assert_eq!(recv(&sock).as_deref(), Some("STOPPING=1\n"));

    let wd = notify::Watchdog::from_env().expect("watchdog enabled");
    assert_eq!(wd.interval(), Duration::from_millis(200));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let heartbeat = wd.heartbeat();
        let stop = CancellationToken::new();
        let beat_every = wd.beat_every();
        let task = wd.spawn(stop.clone(), &tokio_util::task::TaskTracker::new());
        // Main loop alive: pings arrive.
        let beating = tokio::spawn({
            let (h, stop) = (heartbeat.clone(), stop.clone());
            async move {
                let mut t = tokio::time::interval(beat_every);
                while !stop.is_cancelled() {
                    t.tick().await;
                    h.beat();
                }
            }
        });
        let got = tokio::task::spawn_blocking({
            let s = sock.try_clone().unwrap();
            move || recv(&s)
        })
        .await
        .unwrap();
        assert_eq!(got.as_deref(), Some("WATCHDOG=1\n"));
        // Main loop stalls: pings stop.
        beating.abort();
        let _ = beating.await;
        let s = sock.try_clone().unwrap();
        let pings_after_stall = tokio::task::spawn_blocking(move || {
            // Drain what was sent before the stall was noticed, then expect
            // silence for several intervals.
            std::thread::sleep(Duration::from_millis(250));
            s.set_nonblocking(true).unwrap();
            while recv(&s).is_some() {}
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(600)))
                .unwrap();
            recv(&s)
        })
        .await
        .unwrap();
        assert_eq!(pings_after_stall, None);
        stop.cancel();
        task.await.unwrap();
    });

    // Without NOTIFY_SOCKET everything is a quiet no-op.
    std::env::remove_var("NOTIFY_SOCKET");
    notify::ready().unwrap();
    notify::stopping().unwrap();
}
