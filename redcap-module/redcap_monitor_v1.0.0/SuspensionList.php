<?php
/**
 * The daemon's list of suspended tokens, as REDCap's External Module reads it.
 *
 * Owns the reading side of the files redcap-monitor publishes (`[redcap_module]` in its
 * configuration; `monitor-daemon/src/actions/publish.rs` writes them): `suspended.txt`, one line
 * per suspended token (`<fingerprint> <until: epoch seconds, or -> <reason>`) under a header
 * line, and `fingerprint.key`, the key the daemon fingerprints tokens with. Knows nothing of
 * REDCap: given a directory, a token and the time, it says whether that token is suspended.
 * Never writes, logs or keeps the token; per call it costs a stat, two small reads and one HMAC.
 */

namespace RedcapMonitor\ApiPolicyModule;

final class SuspensionList
{
    /** The list's first line; anything else is not a list this code understands. */
    const HEADER = "# redcap-monitor suspended tokens, format 1";
    const LIST_FILE = 'suspended.txt';
    const KEY_FILE = 'fingerprint.key';
    /** The longest token the daemon fingerprints (longer ones are not REDCap tokens). */
    const MAX_TOKEN_BYTES = 128;
    /** Read at most this much of the list (a few hundred thousand suspensions). */
    const MAX_LIST_BYTES = 16777216;

    /** The token is suspended: refuse the call. */
    const SUSPENDED = 'suspended';
    /** The list was read and does not name the token (or its suspension has ended). */
    const CLEAR = 'clear';
    /** No list: the daemon is not running, or not publishing. */
    const MISSING = 'missing';
    /** A list that the daemon has not refreshed within `stale-after` seconds. */
    const STALE = 'stale';
    /** A list or key that cannot be read or is not in the expected form. */
    const UNREADABLE = 'unreadable';

    /**
     * The token as the daemon fingerprints it (upper-cased), or null when REDCap would refuse
     * it as malformed anyway (its check is `^[A-Za-z0-9]+$`, whose `$` also passes a final line
     * feed, which the daemon drops too).
     */
    public static function normalise($token)
    {
        if (!is_string($token)) {
            return null;
        }
        if (substr($token, -1) === "\n") {
            $token = substr($token, 0, -1);
        }
        if ($token === '' || strlen($token) > self::MAX_TOKEN_BYTES
            || !preg_match('/^[A-Za-z0-9]+$/D', $token)) {
            return null;
        }
        return strtoupper($token);
    }

    /**
     * The daemon's fingerprint of a normalised token: the first 16 hex digits of
     * HMAC-SHA256(key, token).
     */
    public static function fingerprint($key, $normalisedToken)
    {
        return substr(hash_hmac('sha256', $normalisedToken, $key), 0, 16);
    }

    /**
     * Whether `$token` is suspended at `$now` (epoch seconds) by the list in `$dir`.
     *
     * Returns ['state' => one of the constants above, 'until' => epoch seconds or null (until
     * lifted), 'reason' => the daemon's reason, 'detail' => what is wrong with the list].
     */
    public static function lookup($dir, $token, $now, $staleAfter)
    {
        $normalised = self::normalise($token);
        if ($normalised === null) {
            // REDCap answers a missing or malformed token with 403 on its own.
            return self::result(self::CLEAR);
        }
        $list = rtrim($dir, '/') . '/' . self::LIST_FILE;
        clearstatcache(true, $list);
        $stat = @stat($list);
        if ($stat === false) {
            return self::result(self::MISSING, "no $list (is redcap-monitor running with [redcap_module] enabled?)");
        }
        $age = $now - $stat['mtime'];
        if ($age > $staleAfter) {
            return self::result(self::STALE, "$list was last refreshed $age s ago (more than $staleAfter s): the daemon is stopped or stuck");
        }
        $keyPath = rtrim($dir, '/') . '/' . self::KEY_FILE;
        $key = @file_get_contents($keyPath, false, null, 0, 32);
        if ($key === false || strlen($key) !== 32) {
            return self::result(self::UNREADABLE, "cannot read a 32-byte key from $keyPath (is the web server's user in the group the daemon hands it to, `redcap_module.group`?)");
        }
        $text = @file_get_contents($list, false, null, 0, self::MAX_LIST_BYTES);
        if ($text === false) {
            return self::result(self::UNREADABLE, "cannot read $list (is the web server's user in `redcap_module.group`?)");
        }
        if (strncmp($text, self::HEADER . "\n", strlen(self::HEADER) + 1) !== 0) {
            return self::result(self::UNREADABLE, "$list does not start with \"" . self::HEADER . "\": not a list this module version reads");
        }
        $fingerprint = self::fingerprint($key, $normalised);
        $at = strpos($text, "\n" . $fingerprint . ' ');
        if ($at === false) {
            return self::result(self::CLEAR);
        }
        $start = $at + 1;
        $end = strpos($text, "\n", $start);
        $line = $end === false ? substr($text, $start) : substr($text, $start, $end - $start);
        $fields = explode(' ', $line, 3);
        $until = isset($fields[1]) && $fields[1] !== '-' ? (int)$fields[1] : null;
        if ($until !== null && $until <= $now) {
            // Ended: the daemon lifts it at the same moment and rewrites the list.
            return self::result(self::CLEAR);
        }
        $result = self::result(self::SUSPENDED);
        $result['until'] = $until;
        $result['reason'] = isset($fields[2]) ? $fields[2] : '';
        return $result;
    }

    private static function result($state, $detail = '')
    {
        return ['state' => $state, 'until' => null, 'reason' => '', 'detail' => $detail];
    }
}
