<?php
/**
 * REDCap External Module: refuses API calls whose token redcap-monitor has suspended.
 *
 * Owns REDCap's `redcap_module_api_before` hook (REDCap 14.1.5 and later): a call whose token
 * the daemon's list names is answered 403 with a message that says the token is suspended by
 * the API policy, until when, why, and whom to contact. When the list is missing or stale (the
 * daemon stopped), the system setting `when-unavailable` decides: let calls through (default)
 * or refuse them; either way REDCap's module log says so, at most once every 10 minutes. No
 * network call, no database query on the path of an allowed call (settings aside); the raw
 * token is never logged or kept.
 */

namespace RedcapMonitor\ApiPolicyModule;

use ExternalModules\AbstractExternalModule;

require_once __DIR__ . '/SuspensionList.php';

class ApiPolicyModule extends AbstractExternalModule
{
    const DEFAULT_LIST_DIR = '/run/redcap-monitor/redcap-module';
    const DEFAULT_STALE_AFTER = 10;
    const DEFAULT_CONTACT = 'your REDCap administrators';
    /** Seconds between two log entries about a missing or stale list. */
    const LOG_EVERY = 600;

    /**
     * REDCap calls this for every API request of a project the module is enabled on, after the
     * token was checked and before the request runs; a string returned is the 403 answer.
     */
    public function redcap_module_api_before($project_id, $post)
    {
        $token = is_array($post) && isset($post['token']) ? $post['token'] : null;
        $found = SuspensionList::lookup($this->listDir(), $token, time(), $this->staleAfter());
        switch ($found['state']) {
            case SuspensionList::SUSPENDED:
                return $this->refusal($found);
            case SuspensionList::CLEAR:
                return null;
            default:
                return $this->unavailable($found);
        }
    }

    /** The 403 message for a suspended token. */
    public function refusal(array $found)
    {
        $until = $found['until'] === null
            ? 'until an administrator lifts it'
            : 'until ' . date('Y-m-d H:i:s T', $found['until']);
        $why = $found['reason'] !== '' ? $found['reason'] : 'no reason recorded';
        return "This API token is suspended by the API policy $until. Why: $why. "
            . 'Contact ' . $this->contact() . ' about it.';
    }

    /** No usable list: logged, then let through (fail open) or refused (fail closed). */
    private function unavailable(array $found)
    {
        $closed = $this->failsClosed();
        $this->logUnavailable($found, $closed);
        if (!$closed) {
            return null;
        }
        return 'The REDCap API is refusing calls because the API policy cannot be checked '
            . '(the suspension list is ' . $found['state'] . '). Contact ' . $this->contact() . '.';
    }

    private function logUnavailable(array $found, $closed)
    {
        $now = time();
        $last = (int)$this->getSystemSetting('unavailable-logged-at');
        if ($last > $now - self::LOG_EVERY && $last <= $now) {
            return;
        }
        $this->setSystemSetting('unavailable-logged-at', (string)$now);
        $this->log(
            'redcap-monitor suspension list ' . $found['state'] . ': API calls are '
                . ($closed ? 'refused (fail closed)' : 'let through unchecked (fail open)'),
            ['list_state' => $found['state'], 'detail' => $found['detail']]
        );
    }

    private function listDir()
    {
        $dir = trim((string)$this->getSystemSetting('list-dir'));
        return $dir !== '' ? $dir : self::DEFAULT_LIST_DIR;
    }

    private function staleAfter()
    {
        $seconds = (int)$this->getSystemSetting('stale-after');
        return $seconds > 0 ? $seconds : self::DEFAULT_STALE_AFTER;
    }

    private function failsClosed()
    {
        return $this->getSystemSetting('when-unavailable') === 'closed';
    }

    private function contact()
    {
        $contact = trim((string)$this->getSystemSetting('contact'));
        return $contact !== '' ? $contact : self::DEFAULT_CONTACT;
    }
}
