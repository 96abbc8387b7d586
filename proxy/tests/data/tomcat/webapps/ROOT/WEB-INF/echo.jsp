<%@ page contentType="text/plain; charset=UTF-8" trimDirectiveWhitespaces="true" %>
<%-- One line each: the request URI as received (undecoded, path parameters included),
     and the path Tomcat resolved (decoded, path parameters removed). --%>
requestURI=<%= request.getRequestURI() %>
resolved=<%= request.getServletPath() %><%= request.getPathInfo() == null ? "" : request.getPathInfo() %>
