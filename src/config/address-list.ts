// The value of --allow-from & co: a comma-separated list of IPv4/IPv6 CIDR blocks (native/core/net/access_policy.h
// parses them again to match peers). Data only, like the flags' table that uses it as a check.
import net from 'node:net';

/** Why one block of a CIDR list is bad ("expected …" follows in the flag's error), or undefined. */
function blockProblem(block: string): string | undefined {
  const [host, prefix, extra] = block.split('/');
  const family = net.isIP(host ?? '');
  if (!family || extra !== undefined) return `${JSON.stringify(block)} is not one`;
  if (prefix === undefined) return undefined;
  const max = family === 4 ? 32 : 128;
  if (!/^\d{1,3}$/.test(prefix) || Number(prefix) > max) return `${JSON.stringify(block)} has a prefix length beyond 0..${max}`;
  return undefined;
}

/** The blocks of a comma-separated CIDR list ("10.0.0.0/8, 2001:db8::/32"). */
export function addressBlocks(list: string | undefined): string[] {
  return (list ?? '')
    .split(',')
    .map((block) => block.trim())
    .filter((block) => block !== '');
}

/** The flags' check: undefined when every block is good, else what a good list is (after "expected"). */
export function addressListProblem(list: string): string | undefined {
  const blocks = addressBlocks(list);
  if (blocks.length === 0) return 'a comma-separated list of IPv4 or IPv6 CIDR blocks (10.0.0.0/8,2001:db8::/32); it is empty';
  for (const block of blocks) {
    const problem = blockProblem(block);
    if (problem) return `a comma-separated list of IPv4 or IPv6 CIDR blocks (10.0.0.0/8,2001:db8::/32, or a host: 192.0.2.7): ${problem}`;
  }
  return undefined;
}

