use std::time::Instant;

use super::*;

/// A server that echoes what it reads, on a free port.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .unwrap()
}

/// Writes `msg` and reads as many bytes back, within five seconds (generous: the
/// machine may be loaded); the error says how it failed.
async fn round_trip(socket: &mut TcpStream, msg: &[u8]) -> Result<Vec<u8>, String> {
    let attempt = async {
        socket.write_all(msg).await.map_err(|e| e.to_string())?;
        let mut back = vec![0u8; msg.len()];
        socket
            .read_exact(&mut back)
            .await
            .map_err(|e| format!("{:?}", e.kind()))?;
        Ok(back)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err("no answer".into()))
}

async fn settle_live(proxy: &FaultProxy, live: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.live() != live {
        assert!(Instant::now() < deadline, "live {} != {live}", proxy.live());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn passes_through_both_ways_and_closes_everything_when_dropped() {
    let proxy = FaultProxy::start(echo_server().await).unwrap();
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    assert_eq!(round_trip(&mut a, b"hello").await.unwrap(), b"hello");
    let big = vec![7u8; 100_000];
    assert_eq!(round_trip(&mut b, &big).await.unwrap(), big);
    settle_live(&proxy, 2).await;
    assert_eq!(proxy.fault(), Fault::PassThrough);
    drop(proxy);
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), a.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed with the proxy: {read:?}"
    );
}

#[tokio::test]
async fn latency_holds_each_chunk_in_each_direction() {
    let proxy = FaultProxy::start(echo_server().await).unwrap();
    let mut a = connect(&proxy).await;
    round_trip(&mut a, b"warm").await.unwrap();
    let (up, down) = (Duration::from_millis(150), Duration::from_millis(100));
    proxy.set(Fault::Latency { up, down });
    let started = Instant::now();
    assert_eq!(round_trip(&mut a, b"slow").await.unwrap(), b"slow");
    // A lower bound only: an upper one would fail on a loaded machine.
    assert!(started.elapsed() >= up + down, "{:?}", started.elapsed());
    proxy.set(Fault::PassThrough);
    assert_eq!(round_trip(&mut a, b"fast").await.unwrap(), b"fast");
}

#[tokio::test]
async fn reset_cuts_open_connections_at_once_and_new_ones_after_n_bytes() {
    let proxy = FaultProxy::start(echo_server().await).unwrap();
    let mut open = connect(&proxy).await;
    round_trip(&mut open, b"before").await.unwrap();
    settle_live(&proxy, 1).await;
    proxy.set(Fault::Reset { after_bytes: 10 });
    settle_live(&proxy, 0).await;
    let err = round_trip(&mut open, b"after").await.unwrap_err();
    assert!(!err.contains("no answer"), "reset, not silent: {err}");

    // A new one: 4 bytes up and 4 back go through, the next 4 pass the 10.
    let mut new = connect(&proxy).await;
    assert_eq!(round_trip(&mut new, b"abcd").await.unwrap(), b"abcd");
    let err = round_trip(&mut new, b"efgh").await.unwrap_err();
    assert!(!err.contains("no answer"), "reset, not silent: {err}");
    settle_live(&proxy, 0).await;
    assert_eq!(proxy.counts(), (2, 2));

    proxy.set(Fault::PassThrough);
    let mut again = connect(&proxy).await;
    let big = vec![1u8; 50_000];
    assert_eq!(round_trip(&mut again, &big).await.unwrap(), big);
}

#[tokio::test]
async fn a_blackhole_reads_and_never_answers_then_service_returns() {
    let proxy = FaultProxy::start(echo_server().await).unwrap();
    let mut open = connect(&proxy).await;
    round_trip(&mut open, b"before").await.unwrap();
    proxy.set(Fault::Blackhole);
    let mut new = connect(&proxy).await;
    for socket in [&mut open, &mut new] {
        socket.write_all(b"anyone?").await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(500), socket.read(&mut buf)).await;
        assert!(read.is_err(), "nothing comes back: {read:?}");
    }
    proxy.set(Fault::PassThrough);
    let mut after = connect(&proxy).await;
    assert_eq!(round_trip(&mut after, b"back").await.unwrap(), b"back");
}

#[tokio::test]
async fn refused_connections_close_at_once_open_ones_go_on() {
    let proxy = FaultProxy::start(echo_server().await).unwrap();
    let mut open = connect(&proxy).await;
    round_trip(&mut open, b"before").await.unwrap();
    proxy.set(Fault::Refuse);
    for _ in 0..3 {
        // Reset so soon that the connect itself may see it.
        let Ok(mut turned_away) = TcpStream::connect(("127.0.0.1", proxy.port())).await else {
            continue;
        };
        let err = round_trip(&mut turned_away, b"hi").await.unwrap_err();
        assert!(!err.contains("no answer"), "closed, not silent: {err}");
    }
    assert_eq!(round_trip(&mut open, b"still").await.unwrap(), b"still");
    assert_eq!(proxy.counts(), (4, 3));
    proxy.set(Fault::PassThrough);
    let mut after = connect(&proxy).await;
    assert_eq!(round_trip(&mut after, b"back").await.unwrap(), b"back");
}
