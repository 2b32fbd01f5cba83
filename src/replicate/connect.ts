// A control connection to a `lazyd agent` (TLS with --tls, the chain and, unless --tls-no-cn-verify, the name
// checked), for `lazyd replicate` and `lazyd failover`.
import net from 'node:net';
import tls, { type SecureContextOptions } from 'node:tls';

export function connectAgentSocket(to: { host: string; port: number }, secure: SecureContextOptions | undefined, verifyName: boolean): Promise<net.Socket> {
  const { host, port } = to;
  return new Promise<net.Socket>((resolve, reject) => {
    const fail = (error: Error) => reject(new Error(`cannot reach the agent at ${host}:${port}: ${error.message}`));
    const socket = secure
      ? tls.connect({
          host,
          port,
          ...secure,
          rejectUnauthorized: true,
          ...(net.isIP(host) ? {} : { servername: host }),
          ...(verifyName ? {} : { checkServerIdentity: () => undefined }),
        })
      : net.connect(port, host);
    socket.once(secure ? 'secureConnect' : 'connect', () => {
      socket.removeListener('error', fail);
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once('error', fail);
  });
}
