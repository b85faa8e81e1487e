// A Java agent as keyswap exec runs it: java.net.http.HttpClient through the proxy that
// JAVA_TOOL_OPTIONS names, authenticating to it as the task in HTTPS_PROXY's userinfo.
//
// Usage: java ProxyProbe URL TOKEN_VAR [MODE]
//   Sends GET URL with "Authorization: Bearer $TOKEN_VAR" and prints "status=N" and the body.
//   MODE (default "header"):
//     header          Proxy-Authorization: Basic set on the request, no Authenticator. JDK 17
//                     sends it preemptively on the CONNECT (not to the origin). The way that works.
//     implicit-proxy  as header, without HttpClient.Builder.proxy(...): the client still uses
//                     ProxySelector.getDefault(), as most Java programs do.
//     authenticator   an Authenticator answering PROXY requests (null for SERVER). JDK 17 then
//                     drops the application's Authorization header (and any Proxy-Authorization).
//     none            no proxy credentials at all.
//
// Never prints the token or the proxy URL.

import java.net.Authenticator;
import java.net.PasswordAuthentication;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.util.Base64;

public class ProxyProbe {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: ProxyProbe URL TOKEN_VAR [MODE]");
            System.exit(2);
        }
        String mode = args.length > 2 ? args[2] : "header";
        String placeholder = System.getenv(args[1]);
        if (placeholder == null) {
            System.err.println("environment variable " + args[1] + " is not set");
            System.exit(2);
        }

        // getUserInfo() decodes the percent-encoding of the proxy URL's userinfo.
        String userInfo = URI.create(System.getenv("HTTPS_PROXY")).getUserInfo();
        int colon = userInfo == null ? -1 : userInfo.indexOf(':');
        String user = userInfo == null ? "" : colon < 0 ? userInfo : userInfo.substring(0, colon);
        String password = colon < 0 ? "" : userInfo.substring(colon + 1);

        HttpClient.Builder builder = HttpClient.newBuilder();
        if (!mode.equals("implicit-proxy")) {
            // The selector that honours -Dhttps.proxyHost/-Dhttps.proxyPort (JAVA_TOOL_OPTIONS).
            builder.proxy(ProxySelector.getDefault());
        }
        if (mode.equals("authenticator")) {
            builder.authenticator(new Authenticator() {
                @Override
                protected PasswordAuthentication getPasswordAuthentication() {
                    // Credentials for the proxy only: the origin's Authorization header is the
                    // application's own (the placeholder keyswap swaps).
                    if (getRequestorType() != RequestorType.PROXY) {
                        return null;
                    }
                    return new PasswordAuthentication(user, password.toCharArray());
                }
            });
        }

        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(args[0]))
                .header("Authorization", "Bearer " + placeholder)
                .GET();
        if (mode.equals("header") || mode.equals("implicit-proxy")) {
            // Only the CONNECT carries it: HttpClient keeps Proxy-* headers off tunnelled requests.
            String basic = Base64.getEncoder()
                    .encodeToString((user + ":" + password).getBytes(StandardCharsets.UTF_8));
            request.header("Proxy-Authorization", "Basic " + basic);
        }

        HttpResponse<String> response =
                builder.build().send(request.build(), HttpResponse.BodyHandlers.ofString());
        System.out.println("status=" + response.statusCode());
        System.out.println(response.body());
    }
}
