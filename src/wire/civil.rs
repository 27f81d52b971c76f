//! Unix time as a UTC calendar date and time of day, for the formats that
//! print one (the status page's timestamps, the access log's).

/// A UTC date and time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
}

impl Civil {
    /// Howard Hinnant's days-to-civil algorithm, exact for every day.
    pub fn from_unix(secs: u64) -> Civil {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Civil {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_across_leap_days_and_centuries() {
        let c = |year, month, day, hour, minute, second| Civil {
            year,
            month,
            day,
            hour,
            minute,
            second,
        };
        assert_eq!(Civil::from_unix(0), c(1970, 1, 1, 0, 0, 0));
        assert_eq!(Civil::from_unix(951_782_400), c(2000, 2, 29, 0, 0, 0));
        assert_eq!(Civil::from_unix(1_700_000_000), c(2023, 11, 14, 22, 13, 20));
        assert_eq!(Civil::from_unix(4_107_542_399), c(2100, 2, 28, 23, 59, 59));
    }
}
