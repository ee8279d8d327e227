/**
 * A client for the registry of a reference, with its credentials found the way the
 * ecosystem finds them (auth.ts): for the CLI on a workstation or in CI, and for a node
 * (its root-only auths file and CA file from /etc/stackboot/config).
 */
import { RegistryClient, type ClientOptions } from './client.js';
import { findCredentials, type CredentialSources } from './auth.js';
import type { Reference } from './reference.js';

export type ConnectOptions = CredentialSources & Omit<ClientOptions, 'credentials'>;

export async function connectRegistry(ref: Reference, o: ConnectOptions = {}): Promise<RegistryClient> {
  const credentials = await findCredentials(ref.registry, o);
  return new RegistryClient(ref.registry, { ...o, credentials });
}
