#!/usr/bin/perl
# Usage: client.pl HOST:PORT FUNC DATA [fg|bg|high] [UNIQUE]
# fg/high: prints the job's result (raw bytes) on stdout; exits 1 if the job failed.
# bg: prints the job handle and a newline.
use strict;
use warnings;
use Gearman::Client;

my ($server, $func, $data, $mode, $unique) = @ARGV;
$mode ||= "fg";
my $client = Gearman::Client->new(job_servers => [$server]);
my %opts = (timeout => 30);
$opts{uniq} = $unique if defined $unique && length $unique;

if ($mode eq "bg") {
    my $handle = $client->dispatch_background($func, \$data, \%opts)
        or die "dispatch_background failed\n";
    print "$handle\n";
    exit 0;
}
$opts{high_priority} = 1 if $mode eq "high";
my $failed = 0;
$opts{on_fail} = sub { $failed = 1 };
my $res = $client->do_task($func, \$data, \%opts);
if (!defined $res || $failed) {
    print STDERR "job failed\n";
    exit 1;
}
binmode STDOUT;
print $$res;
exit 0;
