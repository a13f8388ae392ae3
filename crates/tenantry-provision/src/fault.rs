//! Test-only failure points. Built with the `fault-injection` feature, a step named in
//! `TENANTRY_FAULT=<point>=<error|panic|exit|delay>` fails there: with a returned error, a
//! panic, or an immediate process exit (as a crash would); `delay` stalls the step for
//! three seconds instead (a slow server, for timeouts). Without the feature, every point
//! is a no-op.

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
        _ => Err(ProvisionError::Injected(name.to_owned())),
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn point(_name: &str) -> Result<(), ProvisionError> {
    Ok(())
}
