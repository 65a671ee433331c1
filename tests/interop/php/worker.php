<?php
// Usage: worker.php HOST:PORT FUNC MODE COUNT
// MODE: rev (reverse the workload), progress (WORK_STATUS 1/2 and WORK_DATA "chunk" first),
// fail (WORK_FAIL). Prints "ready" once registered; exits after COUNT jobs.
[, $server, $func, $mode, $count] = $argv;
[$host, $port] = explode(":", $server);
$worker = new GearmanWorker();
$worker->addServer($host, (int)$port);
$done = 0;
$worker->addFunction($func, function (GearmanJob $job) use ($mode, &$done) {
    $done++;
    if ($mode === "fail") {
        $job->sendFail();
        return null;
    }
    if ($mode === "progress") {
        $job->sendStatus(1, 2);
        $job->sendData("chunk");
    }
    return strrev($job->workload());
});
echo "ready\n";
while ($done < (int)$count) {
    if (!$worker->work()) {
        fwrite(STDERR, "work failed: " . $worker->error() . "\n");
        exit(1);
    }
}
