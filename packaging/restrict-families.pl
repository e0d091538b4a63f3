#!/usr/bin/perl
# Runs a command the way systemd's RestrictAddressFamilies= does: a seccomp filter makes
# socket() and socketpair() fail with EAFNOSUPPORT for every address family not listed.
# Used by packaging/test-packages.sh to run the installed monitor under the unit's own
# RestrictAddressFamilies= line. x86_64 only; perl-base only (no modules, no compiler).
#
#   perl restrict-families.pl "AF_INET AF_INET6 AF_UNIX" -- COMMAND [ARGS...]
use strict;
use warnings;

my %family = (AF_UNIX => 1, AF_LOCAL => 1, AF_INET => 2, AF_INET6 => 10, AF_NETLINK => 16,
              AF_PACKET => 17);
my $list = shift @ARGV // die "usage: $0 'AF_... AF_...' -- COMMAND [ARGS...]\n";
shift @ARGV if @ARGV && $ARGV[0] eq '--';
@ARGV or die "usage: $0 'AF_... AF_...' -- COMMAND [ARGS...]\n";
my @allowed = map { $family{$_} // die "$0: unknown address family $_\n" } split /[\s,]+/, $list;

use constant {
    LD_W_ABS  => 0x20, JEQ_K => 0x15, RET_K => 0x06,
    ALLOW     => 0x7fff0000, ERRNO => 0x00050000, EAFNOSUPPORT => 97,
    ARCH_X86_64 => 0xc000003e, NR_SOCKET => 41, NR_SOCKETPAIR => 53,
    NR_PRCTL  => 157, PR_SET_NO_NEW_PRIVS => 38, PR_SET_SECCOMP => 22, SECCOMP_MODE_FILTER => 2,
};
sub ins { pack("SCCL", @_) }    # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }

my $n = scalar @allowed;
my $allow_at = 8 + $n;          # index of the final RET ALLOW
my @prog = (
    ins(LD_W_ABS, 0, 0, 4),                         # 0: A = seccomp_data.arch
    ins(JEQ_K, 1, 0, ARCH_X86_64),                  # 1: x86_64 -> 3
    ins(RET_K, 0, 0, ALLOW),                        # 2: other ABI: allow
    ins(LD_W_ABS, 0, 0, 0),                         # 3: A = seccomp_data.nr
    ins(JEQ_K, 1, 0, NR_SOCKET),                    # 4: socket -> 6
    ins(JEQ_K, 0, $allow_at - 6, NR_SOCKETPAIR),    # 5: socketpair -> 6, else allow
    ins(LD_W_ABS, 0, 0, 16),                        # 6: A = args[0] (family), low word
);
for my $i (0 .. $n - 1) {                           # 7..7+n-1
    push @prog, ins(JEQ_K, $allow_at - (7 + $i + 1), 0, $allowed[$i]);
}
push @prog, ins(RET_K, 0, 0, ERRNO | EAFNOSUPPORT); # 7+n
push @prog, ins(RET_K, 0, 0, ALLOW);                # 8+n

my $filter = join "", @prog;
# struct sock_fprog { unsigned short len; struct sock_filter *filter; }
my $fprog = pack("S x6 Q", scalar @prog, unpack("Q", pack("p", $filter)));
syscall(NR_PRCTL, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 or die "$0: PR_SET_NO_NEW_PRIVS: $!\n";
syscall(NR_PRCTL, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, $fprog, 0, 0) == 0
    or die "$0: PR_SET_SECCOMP: $!\n";
exec { $ARGV[0] } @ARGV or die "$0: exec $ARGV[0]: $!\n";
