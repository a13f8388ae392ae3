//! Test-only failure points. Built with the `fault-injection` feature, a step named in
//! `TENANTRY_FAULT=<point>=<error|panic|exit|delay|hold>` fails there: with a returned
//! error, a panic, or an immediate process exit (as a crash would); `delay` stalls the
//! step for three seconds instead (a slow server, for timeouts), and `hold` until the file
//! `TENANTRY_FAULT_RELEASE` names exists (at most two minutes): the test says when the
//! step goes on. Without the feature, every point is a no-op.

use crate::ProvisionError;

#[cfg(feature = "fault-injection")]
pub(crate) fn point(name: &str) -> Result<(), ProvisionError> {
    let Ok(spec) = std::env::var("TENANTRY_FAULT") else {
        return Ok(());
    };
    let Some((at, mode)) = spec.split_once('=') else {
        return Ok(());
    };
    if at != name {
        return Ok(());
    }
    match mode {
        "panic" => panic!("injected panic at {name}"),
        "exit" => std::process::exit(86),
        "delay" => {
            std::thread::sleep(std::time::Duration::from_secs(3));
            Ok(())
        }
        "hold" => {
            let release = std::env::var_os("TENANTRY_FAULT_RELEASE").map(std::path::PathBuf::from);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while release.as_ref().is_some_and(|f| !f.exists())
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(())
        }
        _ => Err(ProvisionError::Injected(name.to_owned())),
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn point(_name: &str) -> Result<(), ProvisionError> {
    Ok(())
}
