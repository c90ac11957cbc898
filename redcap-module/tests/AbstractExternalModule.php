<?php
/**
 * A stand-in for REDCap's External Module base class, for the module's tests: system settings
 * from an array, `log()` kept in memory (and appended as JSON lines to a file when
 * `$GLOBALS['STANDIN_LOG_FILE']` names one, so that a test driving the module through a web
 * server can read them). Only what ApiPolicyModule uses: getSystemSetting, setSystemSetting, log.
 */

namespace ExternalModules;

abstract class AbstractExternalModule
{
    /** System settings by key (REDCap keeps them in redcap_external_module_settings). */
    public $settings = [];
    /** Every log() call: [message, parameters]. */
    public $logs = [];

    public function __construct()
    {
        if (isset($GLOBALS['STANDIN_SETTINGS']) && is_array($GLOBALS['STANDIN_SETTINGS'])) {
            $this->settings = $GLOBALS['STANDIN_SETTINGS'];
        }
        $file = $this->settingsFile();
        if ($file !== null && is_file($file)) {
            $this->settings = array_merge($this->settings, json_decode(file_get_contents($file), true) ?: []);
        }
    }

    public function getSystemSetting($key)
    {
        return isset($this->settings[$key]) ? $this->settings[$key] : null;
    }

    public function setSystemSetting($key, $value)
    {
        $this->settings[$key] = $value;
        $file = $this->settingsFile();
        if ($file !== null) {
            $saved = is_file($file) ? (json_decode(file_get_contents($file), true) ?: []) : [];
            $saved[$key] = $value;
            file_put_contents($file, json_encode($saved), LOCK_EX);
        }
    }

    public function log($message, $parameters = [])
    {
        $this->logs[] = [$message, $parameters];
        if (isset($GLOBALS['STANDIN_LOG_FILE'])) {
            file_put_contents(
                $GLOBALS['STANDIN_LOG_FILE'],
                json_encode(['message' => $message, 'parameters' => $parameters]) . "\n",
                FILE_APPEND | LOCK_EX
            );
        }
        return count($this->logs);
    }

    /** Where settings written by the module persist across requests, when a test says so. */
    private function settingsFile()
    {
        return isset($GLOBALS['STANDIN_SETTINGS_FILE']) ? $GLOBALS['STANDIN_SETTINGS_FILE'] : null;
    }
}
